"""Soak: a mix of valid and malformed videos in segments, with the server's memory, descriptors and
spool files recorded between them, and the judgement that they stayed flat. ``bench/soak.py`` is
its command line; tests run a short soak."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.load import HttpTarget, Record, Video, children, closed_loop, fd_count, load_average, rss_mb
from harness.media import corrupt_middle, make_audio, make_video, set_mp4_size, truncate

# Malformed files that no decoder can make sense of: these must be refused with a 4xx. The other
# malformed ones (a corrupted middle, a header that lies about the frame size) may decode: 200 or 4xx.
MUST_REFUSE = frozenset({"cut.mp4", "sound.mp4", "notes.mp4", "garbage.mp4"})


def make_mix(directory: Path) -> tuple[list[Video], list[Video]]:
    """(valid, malformed) videos: real small clips, and broken or hostile files."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    valid = [
        make_video(d / "a.mp4", width=160, height=120, frames=50, pattern="corner"),
        make_video(d / "b.webm", codec="vp8", container="webm", width=128, height=96, frames=30),
        make_video(d / "c.avi", codec="mpeg4", container="avi", width=176, height=144, frames=40, pattern="corner"),
        make_video(d / "d.mkv", width=96, height=64, frames=24, pattern="noise"),
    ]
    src = valid[0]
    text = d / "notes.mp4"
    text.write_text("not a video\n" * 40)
    malformed = [
        truncate(src, d / "cut.mp4", 0.4),
        corrupt_middle(src, d / "corrupt.mp4", span=0.3),
        set_mp4_size(src, d / "huge.mp4", 20000, 20000),
        make_audio(d / "sound.mp4"),
        text,
    ]
    garbage = d / "garbage.mp4"
    garbage.write_bytes(src.read_bytes()[:64] + bytes(range(256)) * 40)  # a real header, then nonsense
    malformed.append(garbage)
    load = lambda paths: [Video(p.name, p.read_bytes()) for p in paths]  # noqa: E731
    return load(valid), load(malformed)


def interleave(valid: list[Video], malformed: list[Video], malformed_every: int = 3) -> list[Video]:
    """A repeating order: one malformed video after every ``malformed_every - 1`` valid ones."""
    order: list[Video] = []
    v = m = 0
    for i in range(len(valid) * len(malformed) * malformed_every):
        if i % malformed_every == malformed_every - 1:
            order.append(malformed[m % len(malformed)])
            m += 1
        else:
            order.append(valid[v % len(valid)])
            v += 1
    return order


@dataclass
class Snapshot:
    done: int
    server_rss_mb: float
    worker_rss_mb: list[float]
    fds: int
    spool_fds: int
    spool_files: int
    peak_worker_rss_mb: float = 0.0  # the largest worker RSS sampled during the segment
    load: str = field(default_factory=load_average)

    @property
    def workers_total_mb(self) -> float:
        return sum(self.worker_rss_mb)


def snapshot(pid: int, spool: Path, done: int) -> Snapshot:
    spool_fds = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                spool_fds += str(spool) in str(fd.readlink())
            except OSError:
                continue
    except OSError:
        pass
    workers = [round(rss_mb(c), 1) for c in decode_workers(pid)]
    return Snapshot(done, round(rss_mb(pid), 1), workers, fd_count(pid), spool_fds, len(list(spool.iterdir())))


async def soak(
    url: str,
    pid: int,
    spool: Path,
    valid: list[Video],
    malformed: list[Video],
    requests: int,
    concurrency: int = 4,
    checkpoints: int = 10,
    seconds: float = 3600.0,
) -> tuple[list[Record], list[Snapshot]]:
    """``requests`` in ``checkpoints`` segments; a snapshot after each (the first is the warm-up)."""
    order = interleave(valid, malformed)
    target = HttpTarget(url, concurrency, timeout_s=120, params={"top_k": 3})
    records: list[Record] = []
    snaps: list[Snapshot] = []
    per = max(1, requests // checkpoints)
    try:
        while len(records) < requests:
            n = min(per, requests - len(records))
            offset = len(records) % len(order)
            segment = order[offset:] + order[:offset]  # continue the mix where the last segment stopped
            peak = [0.0]
            watcher = asyncio.create_task(_watch_workers(pid, peak))
            try:
                got, _ = await closed_loop(target, segment, concurrency, n, seconds)
            finally:
                watcher.cancel()
            records += got
            await asyncio.sleep(0.5)  # let recycled workers come back before measuring
            snaps.append(snapshot(pid, spool, len(records)))
            snaps[-1].peak_worker_rss_mb = round(peak[0], 1)
    finally:
        await target.close()
    return records, snaps


def decode_workers(pid: int) -> list[int]:
    """The server's decode workers. A child caught between fork and exec is still a copy of the
    server (its RSS is the server's): it is not counted."""
    out = []
    for child in children(pid):
        try:
            if b"decode_pool" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            continue
    return out


async def _watch_workers(pid: int, peak: list[float], interval_s: float = 0.1) -> None:
    """A worker's RSS climbs through its recycling cycle: its peak over a segment that spans whole
    cycles is what a leak would raise, whatever the phase at the snapshot."""
    while True:
        peak[0] = max([peak[0], *(rss_mb(c) for c in decode_workers(pid))])
        await asyncio.sleep(interval_s)


def judge(records: list[Record], snaps: list[Snapshot], malformed_names: set[str], max_growth: float) -> dict[str, Any]:
    after_warmup, end = snaps[0], snaps[-1]
    k = min(3, max(1, (len(snaps) - 1) // 2))
    first = snaps[1 : 1 + k] or snaps[:1]
    last = snaps[-k:]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    workers_first = mean([s.peak_worker_rss_mb for s in first])
    workers_last = mean([s.peak_worker_rss_mb for s in last])
    server_growth = end.server_rss_mb / after_warmup.server_rss_mb - 1
    worker_growth = workers_last / workers_first - 1 if workers_first else 0.0

    def expected(r: Record) -> bool:
        if r.video not in malformed_names:
            return r.ok
        return r.status.startswith("4") or (r.ok and r.video not in MUST_REFUSE)

    wrong = Counter(f"{r.video}:{r.status}" for r in records if not expected(r))
    checks = {
        "server_rss_growth_ok": server_growth < max_growth,
        "worker_rss_growth_ok": worker_growth < max_growth,
        "fds_flat": end.fds <= after_warmup.fds,
        "no_spool_leftovers": all(s.spool_files == 0 and s.spool_fds == 0 for s in snaps),
        "answers_as_expected": not wrong,
        "no_5xx": not any(r.status.startswith("5") for r in records),
    }
    return {
        "requests": len(records),
        "status_counts": dict(Counter(r.status for r in records)),
        "error_codes": dict(Counter(r.code for r in records if r.code)),
        "server_rss_mb": {"after_warmup": after_warmup.server_rss_mb, "end": end.server_rss_mb},
        "server_rss_growth": round(server_growth, 4),
        "peak_worker_rss_mb": {"first": round(workers_first, 1), "last": round(workers_last, 1)},
        "worker_rss_growth": round(worker_growth, 4),
        "fds": {"after_warmup": after_warmup.fds, "end": end.fds},
        "unexpected": dict(wrong),
        "checks": checks,
        "passed": all(checks.values()),
        "snapshots": [{**vars(s), "workers_total_mb": round(s.workers_total_mb, 1)} for s in snaps],
    }
