"""Clips/s of the Batcher + Runner against max_batch_clips and client concurrency (CPU by default).

    .venv/bin/python -m bench.batching --quick          # ~1-2 minutes on 2 cores
    .venv/bin/python -m bench.batching --results bench/RESULTS.md

Each cell runs ``concurrency`` closed-loop clients (send, await, send again) for a few seconds
against one Batcher; ``max_batch_clips=1`` is batching off (one clip per forward pass). The model
is TSM with random He-initialised weights and calibrated BatchNorm; the frames are synthetic
uint8, so decode is not measured here. The speed-up column compares with batching off at the
same concurrency. Each cell keeps the best of ``--repeats`` interleaved rounds (shared machines
are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from service.inference.batching import Batcher, BatcherConfig, BatchInfo
from service.inference.runner import Runner, RunnerConfig
from service.models.nn.tsm import TSM

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LoadResult:
    clips_per_s: float
    p50_ms: float
    p95_ms: float
    mean_batch: float
    requests: int


def build_model(arch: str, classes: int, segments: int, size: int, device: str = "cpu") -> TSM:
    """Random weights with calibrated BatchNorm statistics (no denormals, realistic activations)."""
    torch.manual_seed(0)
    model = TSM(arch, classes, segments, dropout=0.0)  # type: ignore[arg-type]
    model.to(device).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, segments, 3, size, size, device=device))
    return model.eval()


async def closed_loop(
    batcher: Batcher, frames: np.ndarray, concurrency: int, seconds: float
) -> tuple[int, list[float]]:
    """``concurrency`` clients each send ``frames`` again as soon as the last answer came back."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop_at:
            start = time.monotonic()
            with batcher.reserve(len(frames)) as r:
                await batcher.infer(frames, r)
            latencies.append(time.monotonic() - start)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies) * len(frames), latencies


async def measure(
    runner: Runner, config: BatcherConfig, frames: np.ndarray, concurrency: int, seconds: float, max_batch: int
) -> LoadResult:
    sizes: list[int] = []

    def on_batch(info: BatchInfo) -> None:
        sizes.append(info.size)

    batcher = Batcher(runner, config, on_batch=on_batch, max_batch=max_batch)
    await batcher.start()
    try:
        await closed_loop(batcher, frames, concurrency, min(1.0, seconds / 4))  # settle
        sizes.clear()
        start = time.monotonic()
        clips, lat = await closed_loop(batcher, frames, concurrency, seconds)
        elapsed = time.monotonic() - start
    finally:
        await batcher.stop()
    lat_ms = sorted(x * 1000 for x in lat)
    return LoadResult(
        clips_per_s=clips / elapsed,
        p50_ms=statistics.median(lat_ms),
        p95_ms=lat_ms[min(len(lat_ms) - 1, int(0.95 * len(lat_ms)))],
        mean_batch=statistics.fmean(sizes) if sizes else 0.0,
        requests=len(lat),
    )


def table(rows: list[tuple[int, int, LoadResult]]) -> str:
    off = {c: r.clips_per_s for b, c, r in rows if b == 1}
    out = [
        "| max_batch_clips | concurrency | clips/s | vs batching off | mean batch | p50 ms | p95 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, c, r in rows:
        gain = f"{r.clips_per_s / off[c]:.2f}x" if c in off else "-"
        out.append(
            f"| {b}{' (off)' if b == 1 else ''} | {c} | {r.clips_per_s:.1f} | {gain} | "
            f"{r.mean_batch:.1f} | {r.p50_ms:.0f} | {r.p95_ms:.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="mobilenetv2", choices=["mobilenetv2", "resnet50", "resnet101"])
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--views", type=int, default=1, help="clips per request")
    p.add_argument("--batches", default="1,2,4,8,16", help="max_batch_clips values; 1 is batching off")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all cells; each cell keeps its best")
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument(
        "--cpu-chunk",
        choices=["auto", "off"],
        default="auto",
        help="off: run CPU batches whole, to see what chunking buys",
    )
    p.add_argument("--quick", action="store_true", help="112 px, batches 1,4,16, concurrency 1,8, 3 s per cell")
    p.add_argument("--results", help="append the table to this markdown file")
    a = p.parse_args()
    if a.quick:
        a.size, a.batches, a.concurrency, a.seconds = 112, "1,4,16", "1,8", 3.0
    batches = [int(x) for x in a.batches.split(",")]
    concurrency = [int(x) for x in a.concurrency.split(",")]

    config = BatcherConfig(max_delay_ms=a.delay_ms, max_queue_clips=max(concurrency) * a.views * 2)
    runner = Runner(
        build_model(a.arch, 400, a.segments, a.size, a.device),
        mean=MEAN,
        std=STD,
        num_segments=a.segments,
        input_size=a.size,
        config=RunnerConfig(device=a.device, max_batch_clips=max(batches), chunk_cpu_batches=a.cpu_chunk != "off"),
    )
    runner.warmup()
    frames = np.random.default_rng(0).integers(0, 256, (a.views, a.segments, a.size, a.size, 3), dtype=np.uint8)
    best: dict[tuple[int, int], LoadResult] = {}
    for round_ in range(a.repeats):  # rounds interleave the cells, so drift hits them alike
        for b in batches:
            for c in concurrency:
                r = asyncio.run(measure(runner, config, frames, c, a.seconds, max_batch=b))
                if (b, c) not in best or r.clips_per_s > best[b, c].clips_per_s:
                    best[b, c] = r
                print(
                    f"round {round_ + 1}: max_batch={b:3d} concurrency={c:3d}: {r.clips_per_s:7.1f} clips/s, "
                    f"mean batch {r.mean_batch:.1f}, p50 {r.p50_ms:.0f} ms",
                    flush=True,
                )
    rows = [(b, c, best[b, c]) for b in batches for c in concurrency]
    runner.close()
    cpu = platform.processor() or platform.machine()
    header = (
        f"### bench/batching.py: TSM {a.arch} {a.segments}x{a.size}², {a.views} view(s)/request, "
        f"{a.device} ({cpu}, {torch.get_num_threads()} threads), delay {a.delay_ms:g} ms, "
        f"CPU chunk {runner.cpu_chunk}, {time.strftime('%Y-%m-%d')}"
    )
    report(f"{header}\n\n{table(rows)}\n", a.results)


def report(text: str, results: str | None) -> None:
    """Print a markdown section, and append it to ``results`` (e.g. bench/RESULTS.md) when given."""
    print("\n" + text)
    if results:
        with open(results, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
