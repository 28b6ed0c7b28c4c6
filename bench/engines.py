"""Model-only inference engines on this machine: clips/s by batch size, and each engine's distance to
the float32 eager reference (the number verification judges).

    python -m bench.engines                          # MobileNetV2 and ResNet-50 TSM, 8×224², CPU
    python -m bench.engines --results bench/RESULTS.md

Engines go through the server's own Runner (verification included, no CPU chunking, batches run
whole), except ONNX Runtime, which the server does not ship: it is measured here to justify that
(``pip install onnxruntime onnx`` to include it). Configurations alternate per repeat, so drifting
background load hits them alike; the best of the repeats is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.load import load_average  # noqa: E402
from service.inference.engine_cache import ModelIdentity  # noqa: E402
from service.inference.normalise import Normalise  # noqa: E402
from service.inference.runner import Runner, RunnerConfig  # noqa: E402
from service.models.store import ModelConfig, build_model  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCHS = {"mobilenetv2": "MobileNetV2 ×1.0", "resnet50": "ResNet-50"}
Forward = Callable[[np.ndarray], np.ndarray]


def model_for(arch: str, segments: int, size: int) -> torch.nn.Module:
    """Random weights with BatchNorm statistics calibrated on noise: logits of a realistic spread."""
    torch.manual_seed(0)
    config = ModelConfig(name="b", version="1", weights_sha256="0" * 64, arch=arch, num_segments=segments,
                         num_classes=400, input_size=size)  # fmt: skip
    model = build_model(config)
    torch.nn.init.normal_(model.new_fc.weight, 0.0, 0.05)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, segments, 3, size, size))
    return model.eval()


def runner_engine(model: torch.nn.Module, arch: str, a: argparse.Namespace, engine: str, dtype: str) -> Runner:
    shape = (a.segments, a.size, a.size, 3)
    runner = Runner(
        model, mean=MEAN, std=STD, num_segments=a.segments, input_size=a.size,
        identity=ModelIdentity(arch, f"bench-{arch}-{a.segments}x{a.size}".ljust(64, "0"), shape),
        config=RunnerConfig(device="cpu", engine=engine, dtype=dtype, torch_threads=a.threads,  # type: ignore[arg-type]
                            max_batch_clips=max(a.batches), chunk_cpu_batches=False, engine_cache_dir=a.cache),
    )  # fmt: skip
    runner.warmup(buckets=[1])
    return runner


def onnxruntime_forward(model: torch.nn.Module, a: argparse.Namespace, work: Path) -> Forward | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    normalise = Normalise(MEAN, STD)

    class Serving(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(normalise(x).contiguous())

    path = work / "model.onnx"
    example = torch.zeros((1, a.segments, a.size, a.size, 3), dtype=torch.uint8)
    torch.onnx.export(Serving(), (example,), str(path), dynamo=False, input_names=["frames"],
                      dynamic_axes={"frames": {0: "batch"}}, opset_version=17)  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = a.threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda clips: session.run(None, {"frames": clips})[0]


def agreement(a: argparse.Namespace) -> list[str]:
    """Each engine on the bundled model's fresh evaluation clips (decoded by the server's decoder):
    top-1 accuracy, and how often its top-1 is the float32 reference's."""
    from service.models.store import load_entry
    from service.video.sampling import SamplingSpec
    from training.common import DEFAULT_CACHE, DEFAULT_ENTRY, decoded_clips
    from training.synthetic import FULL, LABELS, SPLIT_EVAL

    entry = load_entry(DEFAULT_ENTRY)
    c = entry.config
    spec = SamplingSpec(c.num_segments, c.scale_size, c.input_size, resize=c.resize)
    frames, labels = decoded_clips(SPLIT_EVAL, 0, a.agreement * len(LABELS), FULL, DEFAULT_CACHE, spec, 2)
    rows, reference = [], None
    for engine, dtype in (("torch", "float32"), ("openvino", "float32"), ("openvino", "bfloat16")):
        runner = Runner(
            entry.model, mean=c.mean, std=c.std, num_segments=c.num_segments, input_size=c.input_size,
            identity=ModelIdentity(c.arch, c.weights_sha256, (c.num_segments, c.input_size, c.input_size, 3)),
            config=RunnerConfig(device="cpu", engine=engine, dtype=dtype, engine_cache_dir=a.cache),  # type: ignore[arg-type]
        )  # fmt: skip
        runner.warmup(buckets=[1])
        logits = np.concatenate([runner.forward(frames[i : i + 8]) for i in range(0, len(frames), 8)])
        runner.close()
        reference = logits if reference is None else reference
        top1 = logits.argmax(1)
        rows.append(
            f"| {runner.engine.label} | {len(labels)} | {(top1 == labels).mean():.1%} "
            f"| {(top1 == reference.argmax(1)).mean():.1%} | {np.abs(logits - reference).max():.1e} |"
        )
        print(rows[-1], flush=True)
    return [
        "",
        f"Agreement on the bundled model ({c.name}), fresh evaluation clips through the server's decoder:",
        "",
        "| engine | clips | top-1 accuracy | same top-1 as torch float32 | max abs Δ logits |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def measure(forward: Forward, clips: np.ndarray, seconds: float) -> float:
    """Clips/s at this batch: the best of repeated runs within ``seconds`` (at least two)."""
    forward(clips)  # first run allocates
    best, end, runs = float("inf"), time.monotonic() + seconds, 0
    while runs < 2 or time.monotonic() < end:
        start = time.perf_counter()
        forward(clips)
        best = min(best, time.perf_counter() - start)
        runs += 1
    return len(clips) / best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    p.add_argument("--archs", default="mobilenetv2,resnet50")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--threads", type=int, default=0, help="inference threads; 0: every core")
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=3.0, help="per cell and repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes per batch size on CPU)")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also compare engines on N evaluation clips per class of the bundled model")  # fmt: skip
    p.add_argument("--results", type=Path, help="append the table to this markdown file")
    a = p.parse_args(argv)
    a.batches = [int(b) for b in a.batches.split(",")]
    a.threads = a.threads or torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="tsm-engines-"))
    a.cache = work / "cache"
    load_before = load_average()
    rows = []
    for arch in a.archs.split(","):
        model = model_for(arch, a.segments, a.size)
        engines: dict[str, Forward] = {}
        distance: dict[str, str] = {}
        configs = [("torch", "float32"), ("openvino", "float32"), ("openvino", "bfloat16")]
        if a.compile:
            configs.insert(1, ("compile", "float32"))
        reference = runner_engine(model, arch, a, "torch", "float32")
        probe = np.random.default_rng(1).integers(0, 256, (2, a.segments, a.size, a.size, 3), dtype=np.uint8)
        want = reference.forward(probe)
        for engine, dtype in configs:
            runner = reference if engine == "torch" else runner_engine(model, arch, a, engine, dtype)
            label = engine if dtype == "float32" else f"{engine} {dtype}"
            if runner.engine.name != engine:
                print(f"{arch}: {label} refused (see the log); not measured", flush=True)
                continue
            engines[label] = runner.forward
            distance[label] = f"{np.abs(runner.forward(probe) - want).max():.1e}"
        ort_forward = onnxruntime_forward(model, a, work)
        if ort_forward is not None:
            engines["onnxruntime (not shipped)"] = ort_forward
            distance["onnxruntime (not shipped)"] = f"{np.abs(ort_forward(probe) - want).max():.1e}"
        rates: dict[str, dict[int, float]] = {label: {} for label in engines}
        for b in a.batches:
            clips = np.random.default_rng(b).integers(0, 256, (b, a.segments, a.size, a.size, 3), dtype=np.uint8)
            for r in range(a.repeats):
                order = list(engines) if r % 2 == 0 else list(reversed(engines))
                for label in order:
                    rate = measure(engines[label], clips, a.seconds)
                    rates[label][b] = max(rates[label].get(b, 0.0), rate)
            print(f"{arch} batch {b}: " + ", ".join(f"{k} {v[b]:.2f}" for k, v in rates.items()), flush=True)
        for label in engines:
            base = rates["torch"]
            cells = " | ".join(f"{rates[label][b]:.2f} ({rates[label][b] / base[b]:.2f}×)" for b in a.batches)
            rows.append(f"| {ARCHS.get(arch, arch)} | {label} | {distance[label]} | {cells} |")
    head = " | ".join(f"batch {b} clips/s" for b in a.batches)
    table = "\n".join([
        f"## Inference engines (`python -m bench.engines`), {dt.date.today().isoformat()}, CPU, "
        f"{a.threads} threads, {a.segments}×{a.size}²",
        "",
        f"Load average {load_before} before, {load_average()} after. Model only (uint8 clips in, logits out, "
        "normalisation included), batches whole; best of "
        f"{a.repeats} alternating repeats of ≥ {a.seconds:g} s; (×) = against torch eager at the same batch. "
        "max |Δ| = largest logit difference from the float32 eager reference on two random clips.",
        "",
        f"| model | engine | max abs Δ | {head} |",
        "|---|---|---:|" + "---:|" * len(a.batches),
        *rows,
        *(agreement(a) if a.agreement else []),
    ])  # fmt: skip
    print(table)
    if a.results:
        with a.results.open("a") as f:
            f.write("\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
