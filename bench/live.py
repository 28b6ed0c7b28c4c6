"""Live streams: how many streams one server carries, and what cross-stream batching gains.

    python bench/live.py                          # ~6 min on 2 cores
    python bench/live.py --quick                  # a smoke run
    python bench/live.py --results bench/RESULTS.md
    python -m bench.live --counts 1,8,16,32,64 --seconds 4 --rounds 1 --engines auto \
        --json out.json --markdown out.md          # bench/gpu.sh's P3 (TSM_DEVICE=cuda in the environment)

A server process (``python -m service``, as shipped but for the store) serves an untrained online
MobileNetV2 ×1.0 at 224² (27 classes, the official online demo's shape). Clients are gRPC
``ClassifyLive`` streams in this process, sending 320×240 JPEG frames (pre-encoded from a moving
pattern: what a browser's canvas sends) and reading answers as they come. Latency is the client's:
from sending a frame to reading its answer.

1. **Capacity at 15 fps**: N streams each send a frame every 1/15 s for ``--seconds``; per N the
   frames answered per second, the frames dropped, and p50/p99 latency. A load is *held* when no
   frame was dropped and p99 ≤ 2 frame intervals (133 ms).
2. **Cross-stream batching** at 16 streams, each sending its next frame as soon as the last is
   answered (saturating): frames per second with batching (``TSM_LIVE_MAX_BATCH_STREAMS=32``, the
   default) against one stream per forward pass (``=1``), for the engine the server picks as shipped
   (``auto``) and for torch eager. One server process at a time, runs alternating.

``--engines`` names the engines (the first also serves the capacity runs), ``--size`` the online model's
input size (224; smaller for a smoke run). The server's device is its own choice, or ``TSM_DEVICE``.
Cut short by SIGINT, it still writes what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.e2e import machine  # noqa: E402
from harness.load import load_average  # noqa: E402
from harness.media import encode_image, moving_frames  # noqa: E402
from harness.process import ServerProcess  # noqa: E402
from service.api.pb.tsm.v1 import classifier_pb2 as pb  # noqa: E402
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402

MODEL = "online_mbv2_224"
FPS = 15.0


@dataclass
class StreamStats:
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    latencies_ms: list[float] | None = None


def make_store(root: Path, size: int = 224) -> Path:
    from harness.entries import write_random_entry

    store = root / "store"
    labels = [f"gesture {i}" for i in range(27)]
    write_random_entry(store, name="tiny", labels=labels[:5], width_mult=0.5, input_size=64, scale_size=72)
    write_random_entry(store, name=MODEL, labels=labels, online=True, width_mult=1.0, input_size=size, scale_size=size)
    return store


def camera_frames() -> list[bytes]:
    """24 JPEG frames of 320×240: a square moving over noise."""
    frames = moving_frames(24, 240, seed=1)
    return [encode_image(np.ascontiguousarray(np.pad(f, ((0, 0), (40, 40), (0, 0)), mode="edge")), "jpeg")
            for f in frames]  # fmt: skip


async def one_stream(target: str, frames: list[bytes], seconds: float, fps: float | None, stats: StreamStats) -> None:
    """A stream for ``seconds``: at ``fps`` (None: each frame as soon as the last is answered)."""
    stats.latencies_ms = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
        await call.write(pb.LiveRequest(options=pb.LiveOptions(model=MODEL, top_k=1)))
        answered = asyncio.Event()
        done_at = time.monotonic() + seconds

        async def read() -> None:
            while (answer := await call.read()) is not grpc.aio.EOF:
                assert isinstance(answer, pb.LiveResponse) and stats.latencies_ms is not None
                stats.latencies_ms.append((time.monotonic_ns() // 1000 - answer.pts_us) / 1000)
                stats.answered += 1
                stats.dropped = answer.dropped_frames
                answered.set()

        reader = asyncio.create_task(read())
        start = time.monotonic()
        while time.monotonic() < done_at:
            data = frames[stats.sent % len(frames)]
            now_us = time.monotonic_ns() // 1000
            await call.write(pb.LiveRequest(frame=pb.Frame(data=data, format="jpeg", pts_us=now_us)))
            stats.sent += 1
            if fps is None:
                await answered.wait()
                answered.clear()
            else:
                await asyncio.sleep(max(0.0, start + stats.sent / fps - time.monotonic()))
        await call.done_writing()
        await reader


async def run_load(
    target: str, frames: list[bytes], streams: int, seconds: float, fps: float | None
) -> dict[str, float]:
    stats = [StreamStats() for _ in range(streams)]
    started = time.monotonic()
    await asyncio.gather(*(one_stream(target, frames, seconds, fps, s) for s in stats))
    wall = time.monotonic() - started
    latencies = np.concatenate([s.latencies_ms or [] for s in stats])
    return {
        "streams": streams, "sent": sum(s.sent for s in stats), "answered": sum(s.answered for s in stats),
        "dropped": sum(s.dropped for s in stats), "fps": sum(s.answered for s in stats) / wall,
        "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
    }  # fmt: skip


async def capacity(
    target: str, frames: list[bytes], counts: list[int], seconds: float, rows: list[dict[str, float]]
) -> list[dict[str, float]]:
    """Fills ``rows`` as it goes: a run cut short keeps the loads measured."""
    await run_load(target, frames, 2, min(2.0, seconds), FPS)  # warm-up
    for n in counts:
        row = await run_load(target, frames, n, seconds, FPS)
        row["held"] = float(row["dropped"] == 0 and row["p99"] <= 2000 / FPS)
        rows.append(row)
        held = "  held" if row["held"] else ""
        print(f"  {n:3d} streams at {FPS:g} fps: {row['fps']:.1f} frames/s answered, {row['dropped']:.0f} dropped, "
              f"p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms{held}", flush=True)  # fmt: skip
        if not row["held"] and n >= 2 * max([r["streams"] for r in rows if r["held"]] or [1]):
            break  # well past the capacity
    return rows


def live_engine(server: ServerProcess) -> str:
    """The step engine the server chose, from its start-up log."""
    found = re.search(r"live streams on engine ([\w-]+)", server.output())
    return found.group(1) if found else "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test of the bench itself")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each capacity run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the batching comparison")
    p.add_argument("--counts", help="comma-separated stream counts at 15 fps (default 1,2,4,6,8,12,16,24,32)")
    p.add_argument("--engines", default="auto,torch", help="engines compared (the first serves the capacity runs)")
    p.add_argument("--size", type=int, default=224, help="the online model's input size")
    p.add_argument("--results", type=Path, help="append the tables to this Markdown file")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    counts = [1, 4, 8] if args.quick else [1, 2, 4, 6, 8, 12, 16, 24, 32]
    if args.counts:
        counts = [int(n) for n in args.counts.split(",")]
    engines = args.engines.split(",")
    frames = camera_frames()
    load_before = load_average()
    cap: list[dict[str, float]] = []
    gains: dict[tuple[str, str], list[float]] = {}
    engine = "unknown"
    interrupted = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = make_store(Path(tmp), args.size)
            shipped = {"engine": engines[0], "cpu_budget": 0, "decode_workers": 0, "log_level": "INFO"}
            print("capacity at 15 fps", flush=True)
            # Batching as shipped (32 streams): this server also serves the first batched run below,
            # one start-up fewer.
            first = ServerProcess(store, live_max_batch_streams=32, **shipped)
            try:
                engine = live_engine(first)
                asyncio.run(capacity(f"127.0.0.1:{first.grpc_port}", frames, counts, seconds, cap))
            except BaseException:
                first.stop()
                raise
            kept: ServerProcess | None = first
            print("cross-stream batching at 16 saturating streams", flush=True)
            for r in range(rounds):
                order = [(e, name, batch) for e in engines for name, batch in
                         (("batched", 32), ("one per forward", 1))]  # fmt: skip
                for wanted, name, batch in order if r % 2 == 0 else order[::-1]:
                    if kept is not None and (wanted, batch) == (engines[0], 32):  # the first run of round 1
                        server, kept = kept, None
                    else:
                        server = ServerProcess(store, live_max_batch_streams=batch, **{**shipped, "engine": wanted})
                    try:
                        label = live_engine(server)
                        target = f"127.0.0.1:{server.grpc_port}"
                        asyncio.run(run_load(target, frames, 4, min(2.0, seconds), None))  # warm-up
                        row = asyncio.run(run_load(target, frames, 16, seconds, None))
                    finally:
                        server.stop()
                    gains.setdefault((label, name), []).append(row["fps"])
                    print(f"  round {r + 1} {label} {name}: {row['fps']:.1f} frames/s, p50 {row['p50']:.0f} ms",
                          flush=True)  # fmt: skip
            if kept is not None:  # no batching rounds
                kept.stop()
    except KeyboardInterrupt:  # bench/gpu.sh's timeout: keep what was measured
        interrupted = True
    text = report(cap, gains, engine, load_before, interrupted, args.size)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "engine": engine, "device": device(), "size": args.size, "interrupted": interrupted, "capacity": cap,
            "held_streams": held_streams(cap),
            "batching": [{"engine": e, "mode": m, "fps": v} for (e, m), v in sorted(gains.items())],
        }, indent=2) + "\n")  # fmt: skip
    if args.markdown:
        args.markdown.write_text(text)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + text)
    return 130 if interrupted else 0


def device() -> str:
    """The server's device as the environment sets it (the server's own choice otherwise)."""
    return os.environ.get("TSM_DEVICE", "auto")


def held_streams(cap: list[dict[str, float]]) -> int:
    return max([int(r["streams"]) for r in cap if r["held"]] or [0])


def report(
    cap: list[dict[str, float]], gains: dict[tuple[str, str], list[float]], engine: str, load_before: str,
    interrupted: bool, size: int,
) -> str:  # fmt: skip
    load_after = load_average()
    held = held_streams(cap)
    labels = sorted({label for label, _ in gains}, key=lambda x: x == "torch")
    # A run cut short may lack a side of the last pair: ratios of the complete pairs only.
    pairs = {label: (gains.get((label, "batched"), []), gains.get((label, "one per forward"), [])) for label in labels}
    ratios = {label: [b / o for b, o in zip(*pair, strict=False)] for label, pair in pairs.items()}
    lines = [
        f"## Live streams (`bench/live.py`), {dt.date.today()}, {machine()}",
        "",
        f"Online MobileNetV2 ×1.0 at {size}² (untrained, 27 classes), server as shipped (live step engine: "
        f"{engine}{'' if device() == 'auto' else f', TSM_DEVICE={device()}'}); "
        f"clients in the bench process on the same cores, 320×240 JPEG frames over gRPC `ClassifyLive`. "
        f"Load average before / after: {load_before} / {load_after}."
        + (" **Cut short by a time limit: the rows measured before it.**" if interrupted else ""),
        "",
        f"**At 15 fps: {held} streams held** (no drops, p99 ≤ 133 ms = 2 frame intervals).",
        "",
        "| streams at 15 fps | frames/s answered | dropped | p50 ms | p99 ms | held |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
        *[f"| {r['streams']:.0f} | {r['fps']:.1f} | {r['dropped']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | "
          f"{'yes' if r['held'] else 'no'} |" for r in cap],
        "",
        "**Cross-stream batching at 16 saturating streams**, frames/s batched over one stream per forward: "
        + "; ".join(f"{label} **{np.mean(r):.2f}×** (rounds {', '.join(f'{x:.2f}×' for x in r)})"
                    for label, r in ratios.items() if r)
        + " (alternating order).",
        "",
        "| engine | | frames/s per round |",
        "| --- | --- | --- |",
        *[f"| {label} | {name} | {', '.join(f'{x:.1f}' for x in v)} |" for (label, name), v in sorted(gains.items())],
        "",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
