"""Fair share between clients, end to end: a light client beside a heavy one (issue #43).

    .venv/bin/python -m bench.fairness [--seconds 40] [--rounds 2] [--results bench/RESULTS.md]

One server process (ResNet-50 TSM 8×224², untrained, the engine and CPU budget it picks here; result
cache off), two API keys. The **light** client sends one 320×240 10 s clip at a time; the **heavy**
client keeps 16 1280×720 5 s clips in flight (a backfill). Cells, each ``--seconds`` long, in turns
within every round: light alone, heavy alone, both with **two keys** (fair share between them), and
both with **one key** (the two are one client to the server: what every server that schedules first
come, first served does to them). Reported: the light client's p50/p99 latency and the heavy client's
videos/s per cell, and the two ratios the issue asks for: light p99 beside the heavy one over light
p99 alone (goal ≤ 3×), heavy videos/s beside the light one over heavy alone (goal ≥ 80%).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.decode import make_clip  # noqa: E402
from bench.e2e import make_store  # noqa: E402
from harness.load import HttpTarget, Record, closed_loop, load_average, load_videos, percentile  # noqa: E402
from harness.process import ServerProcess  # noqa: E402

HEAVY, LIGHT = "bench-heavy-key", "bench-light-key"
CELLS = ("light alone", "heavy alone", "both, two keys", "both, one key")


async def cell(url: str, name: str, light: list[Any], heavy: list[Any], seconds: float) -> dict[str, list[Record]]:
    """One cell: the clients it names, side by side for ``seconds``."""
    runs = {}
    light_key = HEAVY if name == "both, one key" else LIGHT
    if name != "heavy alone":
        runs["light"] = (HttpTarget(url, 1, headers={"Authorization": f"Bearer {light_key}"}), light, 1)
    if name != "light alone":
        runs["heavy"] = (HttpTarget(url, 16, headers={"Authorization": f"Bearer {HEAVY}"}), heavy, 16)
    origin = time.monotonic()
    results = await asyncio.gather(
        *(closed_loop(t, v, c, 100_000, seconds, origin=origin) for t, v, c in runs.values())
    )
    for target, _, _ in runs.values():
        await target.close()
    return {who: records for who, (records, _) in zip(runs, results, strict=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=40.0, help="each cell's length")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the four cells, in turns")
    p.add_argument("--warmup-s", type=float, default=10.0)
    p.add_argument("--results", type=Path, help="append the table to this markdown file")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = make_store(folder / "store", ["resnet50_224"])
        light = load_videos([make_clip(folder / "light.mp4", 320, 240, 10)])
        heavy = load_videos([make_clip(folder / "heavy.mp4", 1280, 720, 5)])
        load_before = load_average()
        server = ServerProcess(store, api_keys=json.dumps([HEAVY, LIGHT]), default_model="resnet50_224",
                               engine="auto", cpu_budget=0, decode_workers=0, max_queue_clips=512)  # fmt: skip
        try:
            engine = httpx.get(f"{server.url}/v1/models/resnet50_224", headers={"Authorization": f"Bearer {HEAVY}"},
                               timeout=10).json()["engine"]  # fmt: skip
            records: dict[str, dict[str, list[Record]]] = {name: {"light": [], "heavy": []} for name in CELLS}
            asyncio.run(cell(server.url, "both, two keys", light, heavy, args.warmup_s))  # warm-up, not counted
            for _ in range(args.rounds):
                for name in CELLS:
                    out = asyncio.run(cell(server.url, name, light, heavy, args.seconds))
                    for who, recs in out.items():
                        records[name][who] += recs
                    print(f"{name}: " + ", ".join(f"{w} {sum(r.ok for r in rs)} ok" for w, rs in out.items()),
                          flush=True)  # fmt: skip
        finally:
            server.stop()
        load_after = load_average()

    rows, summary = [], {}
    for name in CELLS:
        lat = [r.latency_s for r in records[name]["light"] if r.ok]
        heavy_ok = sum(r.ok for r in records[name]["heavy"])
        stats = {
            "light_p50_s": percentile(lat, 50) if lat else None, "light_p99_s": percentile(lat, 99) if lat else None,
            "light_ok": len(lat), "heavy_videos_per_s": heavy_ok / (args.seconds * args.rounds),
            "errors": sorted({r.code or r.status for who in records[name].values() for r in who if not r.ok}),
        }  # fmt: skip
        summary[name] = stats
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append(f"| {name} | {fmt(stats['light_p50_s'])} | {fmt(stats['light_p99_s'])} | {stats['light_ok']} | "
                    f"{stats['heavy_videos_per_s']:.2f} | {', '.join(stats['errors']) or '–'} |")  # fmt: skip
    alone, fair, fifo = summary["light alone"], summary["both, two keys"], summary["both, one key"]
    ratios = {
        "light p99 beside heavy / alone (two keys; goal ≤ 3×)": fair["light_p99_s"] / alone["light_p99_s"],
        "light p99 beside heavy / alone (one key)": fifo["light_p99_s"] / alone["light_p99_s"],
        "heavy videos/s beside light / alone (two keys; goal ≥ 0.8)":
            fair["heavy_videos_per_s"] / summary["heavy alone"]["heavy_videos_per_s"],
    }  # fmt: skip
    lines = [
        f"## Fair share: a light client beside a heavy one (`bench/fairness.py`), {dt.date.today().isoformat()}",
        "",
        f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores; "
        f"ResNet-50 TSM 8×224² (engine {engine}), {args.rounds} rounds × {args.seconds:g} s per cell, cells in "
        "turns; load average "
        f"{load_before} before, {load_after} after. Light: one 320×240 10 s clip at a time; heavy: 16 "
        "1280×720 5 s clips in flight.",
        "",
        "| cell | light p50 s | light p99 s | light answers | heavy videos/s | errors |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        *(f"- {k}: **{v:.2f}**" for k, v in ratios.items()),
    ]
    table = "\n".join(lines)
    print(table)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"cells": summary, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
