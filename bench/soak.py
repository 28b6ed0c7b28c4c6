"""Soak: many requests of mixed valid and malformed videos; memory, descriptors and temp files stay flat.

    .venv/bin/python -m bench.soak                          # 10,000 requests (the issue's size)
    .venv/bin/python -m bench.soak --requests 2000 --json /tmp/soak.json

The server (a small untrained model, so decoding and the request path dominate) runs with its
own spool directory and ``TSM_DECODE_MAX_JOBS`` (default 200, as in production). Requests go in
``--checkpoints`` equal segments at ``--concurrency``; between segments the load stops and the
script records the server's RSS (``VmRSS``), each decode worker's RSS, the server's open file
descriptors, descriptors that point into the spool directory, and files left in it.

Pass: after the warm-up segment, server RSS and total decode-worker RSS grow less than
``--max-growth`` (5 %) to the end; descriptors do not grow; no file is left in the spool directory
(and none after exit); every valid video answers 200 and every malformed one 4xx; no 5xx.
Worker RSS is the peak sampled (every 0.1 s) during each segment, compared as the mean of the first
and last three segments after the warm-up: a worker's RSS climbs through its recycling cycle, so a
single sample depends on the phase; a segment should span a few cycles (requests per segment ≥
2 × workers × ``--decode-max-jobs``; the script warns otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script as well as ``python -m bench.NAME``
    sys.path.insert(0, str(ROOT))

from harness.entries import write_random_entry  # noqa: E402
from harness.load import emit_report, load_average  # noqa: E402
from harness.process import ServerProcess  # noqa: E402
from harness.soak import decode_workers, judge, make_mix, soak  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.soak", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--checkpoints", type=int, default=10, help="segments; the first one is the warm-up")
    p.add_argument("--decode-max-jobs", type=int, default=200)
    p.add_argument("--max-growth", type=float, default=0.05)
    p.add_argument("--duration", type=float, default=3600.0, help="cap per segment, s")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or args.checkpoints < 3:
        p.error("--requests must be 1..100000 and --checkpoints at least 3")
    cycle = 2 * (os.cpu_count() or 1) * args.decode_max_jobs
    if args.requests // args.checkpoints < cycle:
        print(f"warning: segments of {args.requests // args.checkpoints} requests span less than two recycling "
              f"cycles ({cycle}); lower --decode-max-jobs or --checkpoints", file=sys.stderr)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="tsm-soak-"))
    try:
        store = work / "store"
        write_random_entry(store, name="tiny", labels=["a", "b", "c", "d", "e"], width_mult=0.5, input_size=64,
                           scale_size=72)  # fmt: skip
        valid, malformed = make_mix(work / "videos")
        spool = work / "spool"
        server = ServerProcess(store, spool_dir=spool, decode_max_jobs=args.decode_max_jobs, decode_timeout_s=10)
        workers_seen: set[int] = set()
        try:
            records, snaps = asyncio.run(
                soak(server.url, server.proc.pid, spool, valid, malformed, args.requests, args.concurrency,
                     args.checkpoints, args.duration)
            )  # fmt: skip
            workers_seen.update(decode_workers(server.proc.pid))
        finally:
            code = server.stop()
        report = judge(records, snaps, {m.name for m in malformed}, args.max_growth)
        orphans = [pid for pid in workers_seen if Path(f"/proc/{pid}").exists()]
        report["checks"]["clean_exit"] = code == 0
        report["checks"]["spool_empty_after_exit"] = not any(spool.iterdir())
        report["checks"]["no_orphan_workers"] = not orphans
        report["passed"] = all(report["checks"].values())
        report.update(load_average=load_average(), decode_max_jobs=args.decode_max_jobs, exit_code=code)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit_report(report, args.json)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
