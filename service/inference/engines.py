"""Inference engines: one interface, chosen per device, verified against the reference before serving.

An engine maps uint8 clips ``[B, T, H, W, 3]`` (a tensor on the runner's device) to float logits
``[B, C]``; normalisation is part of it. The engines:

* ``torch``: eager PyTorch in float32 (CPU) or autocast float16/bfloat16 (CUDA). In float32 it *is* the
  reference the others are checked against.
* ``compile``: ``torch.compile`` of the same function (CUDA; on CPU it needs a C++ toolchain).
* ``openvino``: the model, normalisation included, converted to OpenVINO IR and run by its CPU plugin
  (float32, or bfloat16 where the CPU has it and ``dtype=bfloat16`` asks for it). It won on our CPU
  (bench/RESULTS.md, engines table).

``auto`` builds every engine the device offers (CPU: openvino, torch; CUDA: compile where a C compiler
is present, for Triton, and torch), verifies each and takes the fastest at batch 1 on this machine. On
CUDA, when torch eager wins, its CUDA graphs are verified and timed too, and replace it when faster.
``torch.compile``'s artefacts (Inductor's FX graph and autotuning caches) are kept under the engine
cache folder, ``inductor/``, so a restart recompiles from the cache in seconds.

**Verification.** Seeded clips go through the engine and through the float32 eager reference; the
engine is refused unless ``max|engine - reference| <= tol * max(1, max|reference|)`` and the top
classes agree. ``tol`` is the golden tolerance for float32 (1e-3 ResNet, 1e-4 MobileNetV2) with the
top-5 identical; 5e-2 with the top-1 identical for float16/bfloat16 (a looser bound: half precisions
round activations to 8-11 bits). A refused engine costs one log line and the runner falls back.

Converted engines are kept by ``service.inference.engine_cache``; an entry whose engine fails
verification is rebuilt, never served.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from service.inference.cuda_graphs import capture
from service.inference.devices import compiler_available
from service.inference.engine_cache import EngineCache, ModelIdentity, default_cache_dir

log = logging.getLogger("tsm.engines")

FP32_TOLERANCE = {"resnet50": 1e-3, "resnet101": 1e-3, "mobilenetv2": 1e-4}
HALF_TOLERANCE = 5e-2

Compute = Callable[[Tensor], Tensor]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """OpenVINO runs bfloat16 natively here (AVX512-BF16 or AMX); elsewhere it would emulate it, slowly."""
    if not openvino_available():
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Engine:
    name: str  # torch, compile, openvino
    precision: str  # float32, float16, bfloat16
    compute: Compute
    build_s: float = 0.0
    cached: bool = False  # loaded from the disk cache rather than converted now
    graphs: bool = False  # torch eager replayed through CUDA graphs, one per batch bucket (the runner's)

    @property
    def label(self) -> str:
        return engine_label(self.name, self.precision) + ("+graphs" if self.graphs else "")


def why(error: BaseException) -> str:
    """An error in one log line: its type and the first line of its message (compilers write pages)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def engine_label(name: str, precision: str) -> str:
    """How logs, /v1/models users and benches name an engine: ``openvino``, ``openvino-bfloat16``."""
    return name if precision == "float32" else f"{name}-{precision}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_abs: float
    bound: float
    reason: str = ""


def verify(engine: Compute, reference: Compute, clips: Tensor, arch: str, precision: str) -> Verdict:
    """Compare an engine's logits with the reference's on the same clips (rules: module docstring)."""
    with torch.inference_mode():
        want = reference(clips).float().cpu()
        got = engine(clips).float().cpu()
    if got.shape != want.shape:
        return Verdict(False, float("inf"), 0.0, f"logits shape {list(got.shape)}, expected {list(want.shape)}")
    if not torch.isfinite(got).all():
        return Verdict(False, float("inf"), 0.0, "non-finite logits")
    half = precision != "float32"
    tol = HALF_TOLERANCE if half else FP32_TOLERANCE.get(arch, 1e-4)
    bound = tol * max(1.0, float(want.abs().max()))
    max_abs = float((got - want).abs().max())
    k = 1 if half else min(5, want.shape[1])
    if max_abs > bound:
        return Verdict(False, max_abs, bound, f"max |logits - reference| {max_abs:.3g} > {bound:.3g}")
    if not torch.equal(got.topk(k).indices, want.topk(k).indices):
        return Verdict(False, max_abs, bound, f"top-{k} classes differ from the reference")
    return Verdict(True, max_abs, bound)


def seeded_clips(clip_shape: Sequence[int], device: torch.device, n: int = 2) -> Tensor:
    generator = torch.Generator().manual_seed(20190)
    return torch.randint(0, 256, (n, *clip_shape), dtype=torch.uint8, generator=generator).to(device)


def time_batch1(compute: Compute, clips: Tensor, runs: int = 2) -> float:
    """Best seconds per clip at batch 1 (the first call, already made by verification, warmed it)."""
    best = float("inf")
    with torch.inference_mode():
        for _ in range(runs):
            start = time.perf_counter()
            compute(clips[:1]).cpu()
            best = min(best, time.perf_counter() - start)
    return best


# ------------------------------------------------------------------------------------- OpenVINO
class _Serving(nn.Module):
    """uint8 clips → logits, the graph OpenVINO converts (normalisation folded into it)."""

    def __init__(self, model: nn.Module, normalise: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.normalise = normalise

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalise(x).contiguous())


def _export_onnx(module: nn.Module, clip_shape: tuple[int, ...]) -> bytes:
    """The model as ONNX (any batch size). Through ONNX, OpenVINO ran our ResNet-50 TSM 18% faster
    than from its own PyTorch converter (bench/RESULTS.md)."""
    example = torch.zeros((1, *clip_shape), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The exporter traces: torch warns about tracing itself and about Python-side shape checks
        # (the clip shape is fixed); verification judges the result.
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(module, (example,), path, dynamo=False, input_names=["frames"], output_names=["logits"],
                          dynamic_axes={"frames": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)  # fmt: skip
        with open(path, "rb") as f:
            return f.read()


def build_openvino(
    model: nn.Module,
    normalise: Callable[[Tensor], Tensor],
    identity: ModelIdentity,
    precision: str,
    threads: int,
    cache: EngineCache | None,
    reuse_cached: bool = True,
) -> Engine:
    """Convert the model for OpenVINO's CPU plugin, or load the conversion from ``cache`` (unless
    ``reuse_cached`` is False: a rebuild), and compile it."""
    import openvino as ov

    start = time.perf_counter()
    key = EngineCache.key(identity, "openvino", ov.get_version(), "float32")  # the IR is float32 either way
    folder = cache.lookup(key) if cache is not None and reuse_cached else None
    cached = folder is not None
    core = ov.Core()
    if folder is not None:
        ir: Any = core.read_model(folder / "model.xml")
    else:
        ir = core.read_model(_export_onnx(_Serving(model, normalise).eval(), identity.clip_shape))
        if cache is not None:
            cache.store(key, lambda d: ov.save_model(ir, d / "model.xml", compress_to_fp16=False))
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all threads on it
        "ENABLE_CPU_PINNING": False,  # decode workers share these cores: pinned threads would wait on them
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(ir, "CPU", config)
    request = compiled.create_infer_request()

    def compute(x: Tensor) -> Tensor:
        out = request.infer({0: x.numpy()})[0]
        return torch.from_numpy(np.array(out))  # the request reuses its output buffer on the next call

    return Engine("openvino", precision, compute, time.perf_counter() - start, cached)


@dataclass
class EngineChooser:
    """Builds, verifies and picks the engine of one runner (``Runner.warmup`` calls :meth:`choose`).
    ``eager`` is the runner's torch forward at its precision, ``reference`` the float32 one."""

    wanted: str  # Settings.engine
    dtype: str  # Settings.dtype
    device: torch.device
    torch_precision: str  # what the torch engine runs in on this device
    model: nn.Module
    normalise: Callable[[Tensor], Tensor]
    eager: Compute
    reference: Compute
    graphable: Compute  # ``eager`` as a CUDA graph may record it (no autocast weight cache)
    identity: ModelIdentity | None
    clip_shape: tuple[int, int, int, int]
    threads: int
    cache_dir: Path | None
    cuda_graphs: bool

    def candidates(self) -> list[tuple[str, str]]:
        """(engine, precision) in order of preference. Half precision leads where the hardware has
        it natively (float16 autocast on CUDA; bfloat16 through OpenVINO on CPUs with bf16 units),
        then float32; torch float32, the reference, is always last."""
        torch_precision, wanted, dtype = self.torch_precision, self.wanted, self.dtype
        if wanted in ("torch", "compile"):
            return [(wanted, torch_precision)]
        if self.device.type == "cuda":
            if wanted != "auto":
                return [(wanted, torch_precision)]
            if compiler_available() is None:
                log.info("engine compile not tried: no C compiler for Triton (set CC, or install gcc)")
                return [("torch", torch_precision)]
            return [("compile", torch_precision), ("torch", torch_precision)]
        if wanted == "openvino" or (wanted == "auto" and openvino_available()):
            bf16 = dtype == "bfloat16" or (dtype == "auto" and cpu_has_native_bf16())
            ov = [("openvino", "bfloat16")] if bf16 else []
            ov += [] if dtype == "bfloat16" else [("openvino", "float32")]
            return ov + ([("torch", "float32")] if wanted == "auto" else [])
        return [("torch", "float32")]

    def build(self, name: str, precision: str, reuse_cached: bool = True) -> Engine:
        if name == "torch":
            return Engine("torch", precision, self.eager)
        if name == "compile":
            # Inductor's caches beside our converted engines (a volume in production), unless set already.
            inductor = Path(self.cache_dir or default_cache_dir()) / "inductor"
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor))
            mode = "reduce-overhead" if self.device.type == "cuda" and self.cuda_graphs else "default"
            return Engine("compile", precision, torch.compile(self.eager, mode=mode, dynamic=False))
        if name == "openvino":
            if self.device.type == "cuda":
                raise ValueError("OpenVINO runs on the CPU; this runner is on " + str(self.device))
            identity = self.identity or ModelIdentity("", "", self.clip_shape)
            cache = EngineCache(self.cache_dir) if self.identity else None
            return build_openvino(self.model, self.normalise, identity, precision, self.threads, cache, reuse_cached)
        raise ValueError(f"unknown engine {name!r}")

    def verified(self, name: str, precision: str, clips: Tensor) -> Engine | None:
        """Build an engine and verify it; a cached engine that fails is rebuilt once. None: refused."""
        arch = self.identity.arch if self.identity else ""
        label = engine_label(name, precision)
        for reuse_cached in (True, False):
            try:
                engine = self.build(name, precision, reuse_cached)
            except Exception as e:  # a missing package, an unsupported op, a compiler error
                log.warning("engine %s refused: it could not be built (%s); falling back", label, why(e))
                return None
            if name == "torch" and precision == "float32":
                return engine  # the reference itself
            try:
                verdict = verify(engine.compute, self.reference, clips, arch, precision)
            except Exception as e:  # torch.compile compiles on the first call: a compiler error surfaces here
                log.warning("engine %s refused: it failed on its first run (%s); falling back", label, why(e))
                return None
            if verdict.ok:
                log.info(
                    "engine %s verified: max |logits - reference| %.2g <= %.2g (%s in %.1f s)",
                    label,
                    verdict.max_abs,
                    verdict.bound,
                    "cached" if engine.cached else "built",
                    engine.build_s,
                )
                return engine
            if not engine.cached:
                break
            log.warning("cached engine %s failed verification (%s): rebuilding it", label, verdict.reason)
        log.warning("engine %s refused: %s against the float32 reference; falling back", label, verdict.reason)
        return None

    def choose(self) -> Engine:
        """The first verified candidate of each engine (precision order), then the fastest engine at
        batch 1 when there is a choice; torch float32 when nothing else passes."""
        clips = seeded_clips(self.clip_shape, self.device)
        chosen: dict[str, Engine] = {}
        for name, precision in self.candidates():
            if name not in chosen and (engine := self.verified(name, precision, clips)) is not None:
                chosen[name] = engine
        if not chosen:
            fallback = self.verified("torch", self.torch_precision, clips)
            # torch at a half precision failed too: float32 is the reference and cannot
            chosen = {"torch": fallback or Engine("torch", "float32", self.reference)}
        timed = []
        for engine in chosen.values():
            seconds = time_batch1(engine.compute, clips) if len(chosen) > 1 else 0.0
            timed.append((seconds, engine))
            if len(chosen) > 1:
                log.info("engine %s: %.1f clips/s at batch 1", engine.label, 1 / max(seconds, 1e-9))
        best = min(timed, key=lambda pair: pair[0])[1]
        if self.device.type == "cuda" and self.wanted == "auto" and best.name == "torch" and not self.cuda_graphs:
            best.graphs = self.graphs_faster(best, clips)
        return best

    def graphs_faster(self, eager: Engine, clips: Tensor) -> bool:
        """Whether CUDA graphs of the eager engine pass verification and beat it by 5% at batch 1."""
        try:
            graph = capture(self.graphable, self.clip_shape, 1, self.device, {})
            if graph is None:
                return False

            def replay(x: Tensor) -> Tensor:
                graph.inp.copy_(x)
                graph.graph.replay()
                return graph.out.clone()

            arch = self.identity.arch if self.identity else ""
            verdict = verify(replay, self.reference, clips[:1], arch, eager.precision)
            if not verdict.ok:
                log.warning("CUDA graphs refused: %s against the float32 reference", verdict.reason)
                return False
            with_graphs, without = time_batch1(replay, clips), time_batch1(eager.compute, clips)
        except Exception as e:  # a capture error (an op that cannot be captured): eager serves
            log.warning("CUDA graphs refused: %s", why(e))
            return False
        log.info("engine %s: %.1f clips/s at batch 1 with CUDA graphs, %.1f without", eager.label,
                 1 / max(with_graphs, 1e-9), 1 / max(without, 1e-9))  # fmt: skip
        return with_graphs < 0.95 * without
