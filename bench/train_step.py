"""Seconds per training step of the bundled model's recipe, by input size and precision, and by
width in the recipe's precision (CPU).

    .venv/bin/python -m bench.train_step                 # ~3 minutes on 2 cores

One step is what ``training/train.py`` does per batch: forward, label-smoothed loss, backward and an
AdamW update of a TSM MobileNetV2 (×0.5 unless a width is given, 8 segments, channels_last) on 16
clips. "bf16" is autocast with fp32 weights; "bf16, strided dw fp32" adds
``train.strided_depthwise_in_fp32`` (the default where the CPU has native bf16). Each row keeps the
best of ``--repeats`` rounds of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from service.models.store import ModelConfig, build_model
from training.train import strided_depthwise_in_fp32

VARIANTS = ["fp32", "bf16", "bf16, strided dw fp32"]


def seconds_per_step(size: int, variant: str, steps: int, repeats: int, width: float = 0.5, batch: int = 16) -> float:
    config = ModelConfig(
        name="bench", version="1", arch="mobilenetv2", num_segments=8, width_mult=width, num_classes=11,
        input_size=size, scale_size=size, resize="stretch", weights_sha256="0" * 64, untrained=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config).to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    bf16 = variant != "fp32"
    if variant == "bf16, strided dw fp32":
        strided_depthwise_in_fp32(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch, config.num_segments, 3, size, size)
    y = torch.randint(0, config.num_classes, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: oneDNN picks its kernels on the first calls
        step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - started) / steps)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 112])
    p.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.75, 1.0], help="at 96², the recipe's precision")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, native bf16: {native}")
    print("| input | " + " | ".join(VARIANTS) + " | speed-up of the last over bf16 |")
    print("| ---: |" + " ---: |" * (len(VARIANTS) + 1))
    for size in args.sizes:
        times = [seconds_per_step(size, v, args.steps, args.repeats) for v in VARIANTS]
        cells = " | ".join(f"{t:.3f} s" for t in times)
        print(f"| {size}² | {cells} | {times[1] / times[2]:.2f}× |", flush=True)
    print("\n| width (96², " + VARIANTS[-1] + ") | s/step | × the first |\n| ---: | ---: | ---: |")
    first = 0.0
    for width in args.widths:
        t = seconds_per_step(96, VARIANTS[-1], args.steps, args.repeats, width)
        first = first or t
        print(f"| ×{width:g} | {t:.3f} s | {t / first:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
