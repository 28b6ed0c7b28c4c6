"""Fuzzing through the server: mutated videos over HTTP; no crash, no hang, no 5xx.

    .venv/bin/python -m bench.fuzz                       # 600 cases, seed 0 (~5-10 min on 2 cores)
    .venv/bin/python -m bench.fuzz --cases 2000 --seed 7 --save-dir /tmp/fuzz-cases
    .venv/bin/python -m bench.fuzz --radamsa             # mutate with radamsa (if installed) as well

Seed videos are small real clips in several containers and codecs (H.264/MP4, VP8/WebM,
MPEG-4/AVI, H.264/MKV, MJPEG/MOV, the repository's sample files under 1 MB). Each case applies 1-4
mutations drawn from a seeded generator: byte flips, chunk cuts, chunk duplications, a zeroed or
random-filled range, header (first 1 KiB) corruption, a cut tail, a spliced chunk of another
seed. Case ``i`` of seed ``s`` is always the same bytes, so any finding replays with ``--only i``.

The server runs with ``TSM_DECODE_TIMEOUT_S=5`` (``--decode-timeout``): a pass means every answer
is one of 200/400/413/415/422, every answer came within the decode timeout + 30 s, and the server
process is alive and answers ``/healthz`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import HttpTarget, Record, Video, emit_report, load_average  # noqa: E402

ALLOWED = frozenset({"200", "400", "413", "415", "422"})
HANG_MARGIN_S = 30.0  # beyond the decode timeout: upload, queueing and a slow shared machine


# ----------------------------------------------------------------------------------- mutator
def _span(rng: random.Random, n: int, most: int) -> tuple[int, int]:
    length = rng.randint(1, max(1, min(most, n)))
    start = rng.randrange(0, max(1, n - length + 1))
    return start, start + length


def mutate(data: bytes, rng: random.Random, others: list[bytes] | None = None) -> tuple[bytes, list[str]]:
    """1-4 mutations of ``data``; returns the bytes and what was done (for the report)."""
    buf = bytearray(data)
    done: list[str] = []
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        if n == 0:
            break
        op = rng.choice(["flip", "flip", "cut", "dup", "fill", "header", "truncate", "splice"])
        if op == "flip":  # a few random bits anywhere
            count = rng.randint(1, 32)
            for _ in range(count):
                buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
            done.append(f"flip {count} bits")
        elif op == "cut":
            a, b = _span(rng, n, max(1, n // 4))
            del buf[a:b]
            done.append(f"cut [{a}:{b}]")
        elif op == "dup":  # a chunk copied somewhere else: repeated boxes, frames, headers
            a, b = _span(rng, n, max(1, n // 4))
            at = rng.randrange(n + 1)
            buf[at:at] = buf[a:b]
            done.append(f"dup [{a}:{b}] at {at}")
        elif op == "fill":
            a, b = _span(rng, n, max(1, n // 8))
            byte = rng.choice([0x00, 0xFF, None])
            buf[a:b] = bytes([byte]) * (b - a) if byte is not None else rng.randbytes(b - a)
            done.append(f"fill [{a}:{b}] with {'random' if byte is None else hex(byte)}")
        elif op == "header":  # container headers hold sizes and counts: the interesting part
            head = min(n, 1024)
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(head)
                buf[at] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            done.append("header bytes")
        elif op == "truncate":
            keep = rng.randint(1, n)
            del buf[keep:]
            done.append(f"truncate to {keep}")
        elif op == "splice" and others:
            other = rng.choice(others)
            a, b = _span(rng, len(other), max(1, len(other) // 4))
            at = rng.randrange(n + 1)
            buf[at:at] = other[a:b]
            done.append(f"splice {b - a} bytes of another seed at {at}")
    return bytes(buf), done


def radamsa(data: bytes, seed: int) -> bytes | None:
    """One radamsa mutation, if the tool is installed."""
    exe = shutil.which("radamsa")
    if exe is None:
        return None
    done = subprocess.run([exe, "-s", str(seed)], input=data, capture_output=True, timeout=30, check=False)
    return done.stdout


# ----------------------------------------------------------------------------------- seeds
def make_seeds(directory: Path) -> list[Path]:
    """Small real clips: several containers and codecs, so each demuxer and decoder is fuzzed."""
    from tests.media import make_video

    directory.mkdir(parents=True, exist_ok=True)
    kinds = [
        ("h264", "mp4", "corner"),
        ("vp8", "webm", "index"),
        ("mpeg4", "avi", "corner"),
        ("h264", "mkv", "index"),
        ("mjpeg", "mov", "corner"),
    ]
    seeds = [
        make_video(directory / f"seed_{codec}.{ext}", codec=codec, container=ext, width=96, height=64, frames=24,
                   pattern=pattern)  # type: ignore[arg-type]
        for codec, ext, pattern in kinds
    ]  # fmt: skip
    samples = ROOT / "tests" / "data" / "videos"
    seeds += [
        p for p in sorted(samples.glob("*")) if p.suffix not in (".md", ".json", ".sh") and p.stat().st_size < 1 << 20
    ]
    return seeds


@dataclass
class Case:
    index: int
    seed_file: str
    mutations: list[str]
    data: bytes


def cases(seeds: list[Video], count: int, seed: int, use_radamsa: bool = False, only: int | None = None) -> list[Case]:
    others = [v.data for v in seeds]
    out = []
    for i in range(count):
        if only is not None and i != only:
            continue
        rng = random.Random(f"{seed}:{i}")
        base = rng.choice(seeds)
        data, done = mutate(base.data, rng, others)
        if use_radamsa and rng.random() < 0.5 and (mutated := radamsa(base.data, rng.randrange(1 << 31))) is not None:
            data, done = mutated, ["radamsa"]
        out.append(Case(i, base.name, done, data))
    return out


async def send_cases(url: str, batch: list[Case], concurrency: int, timeout_s: float) -> list[tuple[Case, Record]]:
    """Every case once, ``concurrency`` at a time; a client timeout is recorded as ``timeout`` (a hang)."""
    target = HttpTarget(url, concurrency, timeout_s=timeout_s, params={"top_k": 1})
    results: list[tuple[Case, Record]] = []
    queue = list(reversed(batch))
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def worker() -> None:
        while queue:
            case = queue.pop()
            results.append((case, await target.send(Video(f"case{case.index}.bin", case.data), t0)))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await target.close()
    return sorted(results, key=lambda r: r[0].index)


def verdict(results: list[tuple[Case, Record]], hang_s: float, alive: bool) -> dict[str, Any]:
    bad = [
        {"case": c.index, "seed": c.seed_file, "mutations": c.mutations, "status": r.status, "code": r.code,
         "latency_s": round(r.latency_s, 2)}
        for c, r in results if r.status not in ALLOWED or r.latency_s > hang_s
    ]  # fmt: skip
    return {
        "cases": len(results),
        "status_counts": dict(Counter(r.status for _, r in results)),
        "error_codes": dict(Counter(r.code for _, r in results if r.code)),
        "max_latency_s": round(max((r.latency_s for _, r in results), default=0.0), 2),
        "server_alive": alive,
        "failures": bad,
        "passed": alive and not bad,
    }


def server_alive(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return False
    try:
        return httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    from service.store import write_random_entry
    from tests.conftest import ServerProcess

    p = argparse.ArgumentParser(prog="bench.fuzz", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, help="replay one case")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--decode-timeout", type=float, default=5.0)
    p.add_argument("--radamsa", action="store_true", help="half the cases from radamsa, when it is installed")
    p.add_argument("--save-dir", type=Path, help="write the bytes of failing cases here")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not 1 <= args.cases <= 100_000:
        p.error("--cases must be between 1 and 100000")
    if args.radamsa and shutil.which("radamsa") is None:
        print("radamsa is not installed; using our own mutator only", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="tsm-fuzz-"))
    try:
        store = work / "store"
        write_random_entry(store, name="tiny", labels=["a", "b", "c", "d", "e"], width_mult=0.5, input_size=64,
                           scale_size=72)  # fmt: skip
        seeds = [Video(p.name, p.read_bytes()) for p in make_seeds(work / "seeds")]
        batch = cases(seeds, args.cases, args.seed, args.radamsa, args.only)
        hang_s = args.decode_timeout + HANG_MARGIN_S
        server = ServerProcess(store, decode_timeout_s=args.decode_timeout, spool_dir=work / "spool")
        try:
            results = asyncio.run(send_cases(server.url, batch, args.concurrency, hang_s + 30))
            alive = server_alive(server.url, server.proc)
            restarts = httpx.get(f"{server.url}/metrics", timeout=10).text if alive else ""
        finally:
            code = server.stop()
        report = verdict(results, hang_s, alive)
        restart_lines = [line for line in restarts.splitlines() if line.startswith("tsm_decode_worker_restarts_total ")]
        report.update(
            seed=args.seed, exit_code=code, load_average=load_average(), seeds=[s.name for s in seeds],
            decode_worker_restarts=float(restart_lines[0].split()[-1]) if restart_lines else None,
        )  # fmt: skip
        report["passed"] = report["passed"] and code == 0
        if args.save_dir and report["failures"]:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            by_index = {c.index: c for c in batch}
            for f in report["failures"]:
                (args.save_dir / f"case{f['case']}.bin").write_bytes(by_index[f["case"]].data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit_report(report, args.json)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
