"""GPU benchmark, run by ``bench/gpu.sh``: model-only clips/s, then the batcher under load.

    python -m bench.gpu_bench --device cuda --results bench/RESULTS.md   # every section
    python -m bench.gpu_bench --device cpu --quick                       # checks the script itself
    python -m bench.gpu_bench --archs resnet50 --dtypes float16 --batches 1,16,128 \
        --sections eager,graphs,compile --json out.json --markdown out.md   # bench/gpu.sh's P4

Sections, in order, each cut short when the time budget (``--budget-s``) runs low:

1. model-only, eager: ResNet-50 and MobileNetV2 TSM (8x224²) at batch 1..128 in
   float32 (TF32 convolutions, PyTorch's default) / float16 / bfloat16 autocast, ± channels_last;
2. model-only with CUDA graphs per batch bucket (float16 and bfloat16, channels_last);
3. serving: clients -> Batcher -> Runner in this process, concurrency 1..64, batching off
   (max_batch_clips=1) and on; synthetic uint8 frames, so decode and HTTP are not included;
4. model-only with ``torch.compile`` (float16, channels_last, two batch sizes: compiles are slow).

"Model-only" times launch + forward + logits back for frames already on the device (the
runner's own path: normalise on device, autocast, channels_last). A configuration whose engine the
runner refused (a compile without a working compiler falls back to eager) says so instead of
timing the fallback. The whole service over HTTP is ``bench/e2e.py`` (``bench/gpu.sh``'s P2).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.batching import MEAN, STD, build_model, measure, report
from service.inference.batching import BatcherConfig
from service.inference.runner import Runner, RunnerConfig

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def used_fraction(self) -> float:
        return 1 - self.left() / self.seconds


def time_point(runner: Runner, batch: int, seconds: float) -> float:
    """clips/s of launch + collect on frames already staged on the device (runs on its thread)."""
    zeros = np.zeros((batch, *runner.clip_shape), np.uint8)
    staged = runner.stage(zeros)
    runner.collect(runner.launch(staged))
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        runner.collect(runner.launch(staged))  # collect synchronises
        n += 1
    return batch * n / (time.perf_counter() - start)


def model_rows(
    a: argparse.Namespace, budget: Budget, stop_at: float, configs: list[dict[str, object]], batches: list[int],
    records: list[dict[str, Any]],
) -> list[str]:  # fmt: skip
    """Markdown rows; ``records`` gets one entry per configuration (clips/s by batch, or why none)."""
    rows = []
    for cfg in configs:
        arch = str(cfg.pop("arch"))
        label = (
            f"| {arch} | {cfg.get('mode', 'eager')} | {DTYPES[str(cfg['dtype'])]} | "
            f"{'yes' if cfg['channels_last'] else 'no'} |"
        )
        mode = cfg.pop("mode", "eager")
        record: dict[str, Any] = {
            "arch": arch, "mode": mode, "dtype": cfg["dtype"], "channels_last": cfg["channels_last"], "clips_per_s": {},
        }  # fmt: skip
        records.append(record)
        if budget.used_fraction() >= stop_at:
            rows.append(label + " skipped (time budget) |" * len(batches))
            record["note"] = "skipped (time budget)"
            continue
        cells = []
        runner = None
        try:
            runner = Runner(
                build_model(arch, 400, a.segments, a.size, a.device),
                mean=MEAN,
                std=STD,
                num_segments=a.segments,
                input_size=a.size,
                # model-only: each batch size as asked for, whole (no CPU chunking)
                config=RunnerConfig(device=a.device, max_batch_clips=max(batches), chunk_cpu_batches=False, **cfg),  # type: ignore[arg-type]
            )
            warm = batches if mode != "compile" else a.compile_batches
            runner.warmup(buckets=warm)
            wanted = "compile" if mode == "compile" else "torch"
            if runner.engine.name != wanted:  # refused or fell back: its numbers would be another engine's
                record["note"] = f"engine {wanted} not used: the runner serves with {runner.engine.label}"
                cells = [f" {record['note']} |"]
                print(f"{label} {record['note']}", flush=True)
                batches_to_time: list[int] = []
            else:
                batches_to_time = batches
            for b in batches_to_time:
                if b not in warm or budget.used_fraction() >= stop_at:
                    cells.append(" - |")
                    continue
                rate = runner.submit(functools.partial(time_point, runner, b, a.point_s)).result()
                cells.append(f" {rate:,.0f} |")
                record["clips_per_s"][b] = round(rate, 1)
        except Exception as e:  # one failing configuration must not cost the rest of the run
            cells = [f" error: {type(e).__name__} |"]
            record["note"] = f"error: {e!r}"[:300]
            print(f"{label} failed: {e!r}", flush=True)
        if runner is not None:
            runner.close()
        rows.append(label + "".join(cells))
        print(rows[-1], flush=True)
        del runner
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def serve_rows(a: argparse.Namespace, budget: Budget, stop_at: float, records: list[dict[str, Any]]) -> list[str]:
    rows = []
    config = BatcherConfig(max_delay_ms=a.delay_ms, max_queue_clips=4 * max(a.concurrency))
    runner = Runner(
        build_model(a.serve_arch, 400, a.segments, a.size, a.device),
        mean=MEAN,
        std=STD,
        num_segments=a.segments,
        input_size=a.size,
        config=RunnerConfig(device=a.device, dtype="float16", channels_last=True, max_batch_clips=a.serve_batch),
    )
    runner.warmup()
    frames = np.random.default_rng(0).integers(0, 256, (1, a.segments, a.size, a.size, 3), dtype=np.uint8)
    base: dict[int, float] = {}
    for max_batch in (1, a.serve_batch):
        for c in a.concurrency:
            if budget.used_fraction() >= stop_at:
                rows.append(f"| {max_batch} | {c} | skipped (time budget) | | | | |")
                continue
            r = asyncio.run(measure(runner, config, frames, c, a.serve_s, max_batch=max_batch))
            if max_batch == 1:
                base[c] = r.clips_per_s
            gain = f"{r.clips_per_s / base[c]:.1f}x" if c in base else "-"
            records.append({"max_batch_clips": max_batch, "concurrency": c, "clips_per_s": round(r.clips_per_s, 1),
                            "mean_batch": r.mean_batch, "p50_ms": r.p50_ms, "p95_ms": r.p95_ms})  # fmt: skip
            rows.append(
                f"| {max_batch}{' (off)' if max_batch == 1 else ''} | {c} | {r.clips_per_s:,.0f} | "
                f"{gain} | {r.mean_batch:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} |"
            )
            print(rows[-1], flush=True)
    runner.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a check that the script runs (CPU)")
    p.add_argument("--archs", default="resnet50,mobilenetv2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    p.add_argument("--compile-batches", default="32,128")
    p.add_argument("--point-s", type=float, default=0.25, help="measured seconds per model-only point")
    p.add_argument("--serve-arch", default="resnet50")
    p.add_argument("--serve-batch", type=int, default=64, help="max_batch_clips when batching is on")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--serve-s", type=float, default=3.0, help="measured seconds per serving point")
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new work after this long")
    p.add_argument("--results", help="append the tables to this markdown file")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    p.add_argument("--sections", default="eager,graphs,serve,compile", help="which sections to run, in this order")
    p.add_argument("--dtypes", default="float32,float16,bfloat16", help="model-only dtypes (CPU: float32 only)")
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.batches, a.compile_batches, a.point_s = 64, "1,2", "2", 0.05
        a.concurrency, a.serve_s, a.serve_batch = "1,4", 1.0, 4
        a.archs, a.serve_arch = "mobilenetv2", "mobilenetv2"
    a.concurrency = [int(x) for x in a.concurrency.split(",")]
    a.compile_batches = [int(x) for x in a.compile_batches.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    archs = a.archs.split(",")
    cuda = a.device.startswith("cuda")
    dtypes = a.dtypes.split(",") if cuda else ["float32"]
    budget = Budget(a.budget_s)

    eager = [
        dict(arch=x, dtype=d, channels_last=cl, engine="torch") for x in archs for d in dtypes for cl in (False, True)
    ]
    graphs = [
        dict(arch=x, mode="graphs", dtype=d, channels_last=True, cuda_graphs=True, engine="torch")
        for x in archs
        for d in dtypes
        if cuda and d != "float32"
    ]
    compiled = [
        dict(arch=x, mode="compile", dtype="float16" if cuda else "float32", channels_last=True, engine="compile")
        for x in archs[:1]
    ]

    head = "| arch | mode | dtype | channels_last |" + "".join(f" b={b} |" for b in batches)
    rule = "| --- | --- | --- | --- |" + " ---: |" * len(batches)
    model_table: list[str] = [head, rule]
    serve_table = [
        "| max_batch_clips | concurrency | clips/s | vs off | mean batch | p50 ms | p95 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    models: list[dict[str, Any]] = []
    serving: list[dict[str, Any]] = []
    sections: dict[str, tuple[Callable[[], list[str]], list[str]]] = {
        "eager": (lambda: model_rows(a, budget, 0.40, eager, batches, models), model_table),
        "graphs": (lambda: model_rows(a, budget, 0.55, graphs, batches, models), model_table),
        "serve": (lambda: serve_rows(a, budget, 0.80, serving), serve_table),
        "compile": (lambda: model_rows(a, budget, 0.98, compiled, batches, models), model_table),
    }
    wanted = a.sections.split(",")
    interrupted = False
    try:
        for name in wanted:
            run, table = sections[name]
            table.extend(run())
    except KeyboardInterrupt:  # gpu.sh's hard timeout: keep what was measured
        interrupted = True
    on_gpu = cuda and torch.cuda.is_available()  # asked for cuda where there is none: the rows say so
    card = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    cu = f", CUDA {torch.version.cuda}" if cuda else ""
    text = (
        f"### bench/gpu_bench.py on {card}: torch {torch.__version__}{cu}, TSM {a.segments}x{a.size}², "
        f"{time.strftime('%Y-%m-%d %H:%M')}{' (interrupted)' if interrupted else ''}\n\n"
    )
    if os.environ.get("TORCHDYNAMO_DISABLE") == "1":  # gpu.sh's dry run: no inductor builds on a CPU check
        text += "TORCHDYNAMO_DISABLE=1: the compile rows ran eager (a check of the script, not a measurement).\n\n"
    if any(s != "serve" for s in wanted):
        text += "Model-only clips/s (frames already on the device):\n\n" + "\n".join(model_table) + "\n"
    if "serve" in wanted:
        text += (
            f"\nServing in-process ({a.serve_arch}, {'fp16' if cuda else 'fp32'}, channels_last, "
            f"delay {a.delay_ms:g} ms, 1 clip per request, closed-loop clients):\n\n" + "\n".join(serve_table) + "\n"
        )
    report(text, a.results)
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps({
            "card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "device": a.device,
            "segments": a.segments, "size": a.size, "interrupted": interrupted, "model_only": models,
            "serving": serving,
        }, indent=2) + "\n")  # fmt: skip
    # Every configuration failing is the run failing (gpu.sh's summary says so), not a table of errors.
    return 1 if models and not any(m["clips_per_s"] for m in models) else 0


if __name__ == "__main__":
    sys.exit(main())
