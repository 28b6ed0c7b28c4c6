"""Bounded load against a tsm-serve over loopback only: HTTP or gRPC targets, closed and open
loops, per-request records and their summary, and what a process tree uses (RSS, CPU,
descriptors). ``bench/load.py`` is its command line; tests drive it with small, bounded runs."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc
import httpx

from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.core.metrics import STAGES

MAX_REQUESTS = 100_000
MAX_SECONDS = 3600.0
OK_STATUSES = frozenset({"200", "OK"})


# ----------------------------------------------------------------------------------- targets
def require_loopback(host: str) -> None:
    """Refuses any address that is not this machine's loopback (no name resolution)."""
    host = host.strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"refusing to send load to {host!r}: only loopback addresses (127.0.0.0/8, ::1) are allowed")


@dataclass(frozen=True)
class Video:
    name: str
    data: bytes


def load_videos(paths: Sequence[Path]) -> list[Video]:
    """Reads every video into memory once, so disk reads never show in the timings."""
    if not paths:
        raise ValueError("no videos given")
    return [Video(Path(p).name, Path(p).read_bytes()) for p in paths]


@dataclass
class Record:
    """One request as the client saw it. ``status`` is the HTTP status ("200", "429"), the gRPC
    status name ("OK", "RESOURCE_EXHAUSTED"), or a client-side outcome ("timeout", "connect_error",
    "transport_error:<class>", "client_skipped")."""

    video: str
    status: str
    start_s: float  # since the start of the run
    latency_s: float
    code: str = ""  # the server's stable error code, if any
    retry_after: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)  # class index -> score, for correctness checks

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s


class Target(Protocol):
    async def send(self, video: Video, t0: float) -> Record: ...

    async def close(self) -> None: ...


class HttpTarget:
    """POST /classify with the video as multipart field ``file`` (what browsers and curl -F send)."""

    def __init__(
        self, url: str, concurrency: int, timeout_s: float = 120.0, params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        require_loopback(urlsplit(url).hostname or "")
        limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, headers=headers)
        self._params = params or {"top_k": 5}

    async def send(self, video: Video, t0: float) -> Record:
        start = time.monotonic()
        try:
            r = await self._http.post("/classify", params=self._params, files={"file": (video.name, video.data)})
        except httpx.TimeoutException:
            return Record(video.name, "timeout", start - t0, time.monotonic() - start)
        except httpx.ConnectError:
            return Record(video.name, "connect_error", start - t0, time.monotonic() - start)
        except httpx.TransportError as e:
            return Record(video.name, f"transport_error:{type(e).__name__}", start - t0, time.monotonic() - start)
        record = Record(video.name, str(r.status_code), start - t0, time.monotonic() - start)
        record.retry_after = r.headers.get("retry-after")
        try:
            body = r.json()
        except ValueError:
            record.code = "not_json"
            return record
        if r.status_code == 200:
            record.timings_ms = dict(body.get("timings_ms", {}))
            record.scores = {int(p["index"]): float(p["score"]) for p in body.get("predictions", [])}
        elif isinstance(body, dict) and isinstance(body.get("error"), dict):
            record.code = str(body["error"].get("code", ""))
        return record

    async def close(self) -> None:
        await self._http.aclose()


class GrpcTarget:
    """Unary ``tsm.v1.VideoClassifier/Classify`` with the whole video in one message."""

    def __init__(
        self, target: str, timeout_s: float = 120.0, top_k: int = 5, model: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        require_loopback(target.rsplit(":", 1)[0])
        self._metadata = tuple((k.lower(), v) for k, v in (metadata or {}).items())
        limit = 256 * 1024 * 1024
        self._channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        )
        self._stub = pb_grpc.VideoClassifierStub(self._channel)
        self._timeout_s = timeout_s
        self._options = pb.ClassifyOptions(top_k=top_k, model=model)

    async def send(self, video: Video, t0: float) -> Record:
        options = pb.ClassifyOptions()
        options.CopyFrom(self._options)
        options.filename = video.name
        start = time.monotonic()
        try:
            answer = await self._stub.Classify(
                pb.ClassifyRequest(options=options, video=video.data),
                timeout=self._timeout_s,
                metadata=self._metadata or None,
            )
        except grpc.aio.AioRpcError as e:
            record = Record(video.name, e.code().name, start - t0, time.monotonic() - start)
            trailers = dict(e.trailing_metadata() or ())
            record.code = str(trailers.get("tsm-error-code", ""))
            retry = trailers.get("retry-after-s")
            record.retry_after = str(retry) if retry is not None else None
            return record
        record = Record(video.name, "OK", start - t0, time.monotonic() - start)
        t = answer.classification.timings
        record.timings_ms = {s: float(getattr(t, f"{s}_ms")) for s in STAGES}
        record.scores = {int(p.index): float(p.score) for p in answer.classification.predictions}
        return record

    async def close(self) -> None:
        await self._channel.close()


# ------------------------------------------------------------------------------------- loops
def _caps(requests: int, seconds: float) -> tuple[int, float]:
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be between 1 and {MAX_REQUESTS}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"duration must be between 0 and {MAX_SECONDS:g} s")
    return requests, seconds


async def closed_loop(
    target: Target,
    videos: Sequence[Video],
    concurrency: int,
    requests: int,
    seconds: float,
    stop_after: Callable[[Record], bool] | None = None,
    on_record: Callable[[Record], None] | None = None,
    origin: float | None = None,
) -> tuple[list[Record], float]:
    """``concurrency`` clients back to back; returns the records and the run's wall time.
    ``stop_after(record)`` true ends that client (e.g. a 503 while the server drains). Record times
    count from ``origin`` (a ``time.monotonic()``; default: now), so runs side by side share a clock."""
    requests, seconds = _caps(requests, seconds)
    records: list[Record] = []
    issued = 0
    t0 = time.monotonic() if origin is None else origin
    deadline = t0 + seconds

    async def client() -> None:
        nonlocal issued
        while issued < requests and time.monotonic() < deadline:
            video = videos[issued % len(videos)]
            issued += 1
            record = await target.send(video, t0)
            records.append(record)
            if on_record is not None:
                on_record(record)
            if stop_after is not None and stop_after(record):
                return

    await asyncio.gather(*(client() for _ in range(max(1, concurrency))))
    return records, time.monotonic() - t0


async def open_loop(
    target: Target,
    videos: Sequence[Video],
    rate: float,
    requests: int,
    seconds: float,
    max_outstanding: int = 1000,
) -> tuple[list[Record], float]:
    """One arrival every ``1/rate`` s (a fixed schedule, so runs repeat), whatever the answers do."""
    requests, seconds = _caps(requests, seconds)
    if rate <= 0:
        raise ValueError("rate must be positive")
    records: list[Record] = []
    pending: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()

    async def one(video: Video) -> None:
        records.append(await target.send(video, t0))

    for i in range(requests):
        due = t0 + i / rate
        if due - t0 >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        video = videos[i % len(videos)]
        if len(pending) >= max_outstanding:  # the client itself is the bottleneck: say so, don't queue
            records.append(Record(video.name, "client_skipped", time.monotonic() - t0, 0.0))
            continue
        task = asyncio.create_task(one(video))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return records, time.monotonic() - t0


# ---------------------------------------------------------------------------- process facts
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), MB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the server's decode workers)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return sorted(set(out))


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _stat_fields(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its reaped children (recycled workers) and its live children."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for child in children(pid):
        f = _stat_fields(child)
        if f:
            ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # guest time is already inside user
    return total - values[3] - values[4], total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Sampler:
    """Polls /metrics (decode workers busy) and /proc (CPU) while a run goes on."""

    def __init__(self, metrics_url: str | None, server_pid: int | None, interval_s: float = 0.25) -> None:
        if metrics_url:
            require_loopback(urlsplit(metrics_url).hostname or "")
        self._url, self._pid, self._interval = metrics_url, server_pid, interval_s
        self._busy: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = self._machine0 = (0.0, 0.0)
        self._t0 = 0.0

    async def __aenter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = (tree_cpu_s(self._pid) if self._pid else 0.0, 0.0)
        self._machine0 = machine_cpu()
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        wall = time.monotonic() - self._t0
        busy, total = machine_cpu()
        cores = os.cpu_count() or 1
        self.result: dict[str, float | None] = {
            "decode_busy_fraction": round(sum(self._busy) / len(self._busy), 3) if self._busy else None,
            "server_cpu_cores": round((tree_cpu_s(self._pid) - self._cpu0[0]) / wall, 2) if self._pid else None,
            "machine_cpu_util": round((busy - self._machine0[0]) / max(1.0, total - self._machine0[1]), 3),
            "cores": cores,
        }

    async def _poll(self) -> None:
        if not self._url:
            return
        async with httpx.AsyncClient(base_url=self._url, timeout=5) as http:
            while True:
                try:
                    text = (await http.get("/metrics")).text
                    busy = metric(text, "tsm_decode_workers", state="busy")
                    workers = metric(text, "tsm_decode_workers", state="workers")
                    if workers:
                        self._busy.append(busy / workers)
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(self._interval)


def metric(text: str, name: str, /, **labels: str) -> float:
    """One series of a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m[1] or "") for k, v in labels.items()):
            return float(m[2])
    return 0.0


# ----------------------------------------------------------------------------------- report
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(records: Sequence[Record], elapsed_s: float) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    latencies = [r.latency_s * 1000 for r in ok]
    stages: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        values = [r.timings_ms[stage] for r in ok if stage in r.timings_ms]
        if values:
            stages[stage] = {"mean": round(sum(values) / len(values), 1), "p50": round(percentile(values, 50), 1)}
    return {
        "requests": len(records),
        "ok": len(ok),
        "elapsed_s": round(elapsed_s, 2),
        "videos_per_s": round(len(ok) / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        "latency_ms": {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 90, 99)},
        "max_latency_ms": round(max((r.latency_s for r in records), default=0.0) * 1000, 1),
        "stages_ms": stages,
        "status_counts": dict(Counter(r.status for r in records)),
        "error_codes": dict(Counter(r.code for r in records if r.code)),
    }


def emit_report(report: dict[str, Any], json_path: Path | None) -> None:
    """Print the report as JSON, and write it to ``json_path`` too when one is given."""
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")
