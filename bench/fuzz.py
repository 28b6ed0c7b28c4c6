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
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script as well as ``python -m bench.NAME``
    sys.path.insert(0, str(ROOT))

from harness.entries import write_random_entry  # noqa: E402
from harness.fuzz import HANG_MARGIN_S, cases, make_seeds, send_cases, server_alive, verdict  # noqa: E402
from harness.load import Video, emit_report, load_average  # noqa: E402
from harness.process import ServerProcess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
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
