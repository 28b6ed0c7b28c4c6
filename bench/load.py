"""Bounded load generator for tsm-serve: HTTP multipart or gRPC, closed or open loop, loopback only.

    .venv/bin/python -m bench.load --url http://127.0.0.1:8000 --videos a.mp4 b.mp4 --concurrency 16 --requests 200
    .venv/bin/python -m bench.load --grpc 127.0.0.1:50051 --metrics-url http://127.0.0.1:8000 \\
        --videos a.mp4 --rate 2 --requests 100 --duration 120 --json out.json

Closed loop: ``concurrency`` clients, each sends its next video as soon as its last answer came
back. Open loop: one request every ``1/rate`` seconds whatever the answers do (at most
``--max-outstanding`` in flight; beyond that an arrival is counted as ``client_skipped``).
Videos are read into memory before the run; they are sent round-robin.

Every run is capped twice: ``--requests`` (≤ 100,000) and ``--duration`` seconds (≤ 3600; no new
request starts after it, the ones in flight finish or hit ``--timeout``). Targets must be loopback
addresses: this tool never sends load anywhere else.

The report (JSON): videos/s (successful answers per second of the run), p50/p90/p99 latency of the
successful requests, per-stage server timings (upload/decode/queue/inference/total, from the
answers), status-code counts, error-code counts and, when sampled, the decode-worker busy fraction
(``tsm_decode_workers``), CPU use of the server's process tree (``--server-pid``) and of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script as well as ``python -m bench.NAME``
    sys.path.insert(0, str(ROOT))

from harness.load import (  # noqa: E402
    MAX_REQUESTS,
    MAX_SECONDS,
    GrpcTarget,
    HttpTarget,
    Sampler,
    Target,
    closed_loop,
    emit_report,
    load_average,
    load_videos,
    open_loop,
    summarize,
)


# -------------------------------------------------------------------------------------- CLI
async def run(args: argparse.Namespace) -> dict[str, Any]:
    videos = load_videos(args.videos)
    params: dict[str, Any] = {"top_k": args.top_k}
    if args.model:
        params["model"] = args.model
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    target: Target
    if args.grpc:
        target = GrpcTarget(args.grpc, args.timeout, args.top_k, args.model or "", headers)
        metrics_url = args.metrics_url
    else:
        target = HttpTarget(args.url, args.concurrency, args.timeout, params, headers)
        metrics_url = args.metrics_url or args.url
    try:
        if args.warmup:
            await closed_loop(target, videos, min(args.concurrency, args.warmup), args.warmup, args.duration)
        async with Sampler(metrics_url, args.server_pid) as sampler:
            if args.rate:
                records, elapsed = await open_loop(
                    target, videos, args.rate, args.requests, args.duration, args.max_outstanding
                )
            else:
                records, elapsed = await closed_loop(target, videos, args.concurrency, args.requests, args.duration)
    finally:
        await target.close()
    report = summarize(records, elapsed)
    report.update(
        protocol="grpc" if args.grpc else "http",
        mode=f"open loop {args.rate}/s" if args.rate else f"closed loop c={args.concurrency}",
        videos=[v.name for v in videos],
        profile=sampler.result,
        load_average=load_average(),
    )
    if args.records:
        report["records"] = [asdict(r) for r in records]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.load", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="HTTP base URL, e.g. http://127.0.0.1:8000 (loopback only)")
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC target, e.g. 127.0.0.1:50051 (loopback only)")
    p.add_argument("--metrics-url", help="HTTP base URL to sample /metrics from (default: --url)")
    p.add_argument("--videos", type=Path, nargs="+", required=True)
    p.add_argument("--concurrency", type=int, default=4, help="closed loop: clients")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: arrivals per second (overrides closed loop)")
    p.add_argument("--requests", type=int, default=100, help=f"at most this many (≤ {MAX_REQUESTS})")
    p.add_argument("--duration", type=float, default=60.0, help=f"no new request after this many s (≤ {MAX_SECONDS:g})")
    p.add_argument("--warmup", type=int, default=0, help="requests sent (and not counted) before the run")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, s")
    p.add_argument("--max-outstanding", type=int, default=1000, help="open loop: most requests in flight")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--model", help="model name (default: the server's default)")
    p.add_argument("--header", action="append", default=[], help="'Name: value' sent with every request")
    p.add_argument("--server-pid", type=int, help="measure CPU of this process and its children")
    p.add_argument("--records", action="store_true", help="include every request in the JSON")
    p.add_argument("--json", type=Path, help="write the report here as well as to stdout")
    args = p.parse_args(argv)
    emit_report(asyncio.run(run(args)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
