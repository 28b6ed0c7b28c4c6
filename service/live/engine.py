"""How one live step is computed: the frames of B streams and their states in, logits and new states out.

Two engines, chosen once per online model when the server starts (``choose_live_engine``):

- ``torch``: the model itself, eager, float32, channels-last (the reference);
- ``openvino``: the same step converted through ONNX (normalisation folded in, any number of streams),
  float32, or bfloat16 where the CPU runs it natively, like the clip engines (``service.inference.engines``).

A converted step serves only after it matches the torch step on seeded frames stepped three times
from a zero state (so the carried state is checked too), to the clip engines' bounds and top-k rule;
a refused or failed conversion logs why, and torch serves. Of the verified engines the faster one at a
batch of four streams serves.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from service.inference.engines import cpu_has_native_bf16, engine_label, openvino_available, verify
from service.inference.normalise import Normalise
from service.models.nn.online import OnlineTSM

log = logging.getLogger("tsm.live")

StepFn = Callable[[Tensor, list[Tensor]], tuple[Tensor, list[Tensor]]]  # uint8 [B, S, S, 3], states


@dataclass
class LiveEngine:
    name: str
    precision: str
    step: StepFn

    @property
    def label(self) -> str:
        return engine_label(self.name, self.precision)


class _StepGraph(nn.Module):
    """uint8 frames ``[B, S, S, 3]`` + states → logits ``[B, classes]`` + new states."""

    def __init__(self, model: OnlineTSM, normalise: Normalise) -> None:
        super().__init__()
        self.model, self.normalise = model, normalise

    def forward(self, frames: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model.run(self.normalise(frames[:, None]), list(state))
        return (logits[:, 0], *new)


def torch_step(model: OnlineTSM, normalise: Normalise) -> LiveEngine:
    graph = _StepGraph(model, normalise)

    def step(frames: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        with torch.inference_mode():
            logits, *new = graph(frames, *state)
        return logits, new

    return LiveEngine("torch", "float32", step)


def openvino_step(
    model: OnlineTSM, normalise: Normalise, size: int, zero: list[Tensor], precision: str, threads: int
) -> LiveEngine:
    import openvino as ov

    graph = _StepGraph(model, normalise).eval()
    example = (torch.zeros(1, size, size, 3, dtype=torch.uint8), *[z[None] for z in zero])
    names = [f"state{i}" for i in range(len(zero))]
    batch = {0: "streams"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; verification judges the result
        path = os.path.join(tmp, "step.onnx")
        torch.onnx.export(
            graph, example, path, dynamo=False, input_names=["frames", *names],
            output_names=["logits", *[f"next_{n}" for n in names]], opset_version=17,
            dynamic_axes={n: batch for n in ["frames", *names, "logits", *[f"next_{n}" for n in names]]},
        )  # fmt: skip
        core = ov.Core()
        ir = core.read_model(path)
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(ir, "CPU", config)
    request = compiled.create_infer_request()

    def step(frames: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        results = request.infer([frames.numpy(), *[s.contiguous().numpy() for s in state]])
        # copies: the request reuses its output buffers on the next call
        out = [torch.from_numpy(np.array(results[o])) for o in compiled.outputs]
        return out[0], out[1:]

    return LiveEngine("openvino", precision, step)


def _stepped(engine: LiveEngine, zero: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """Clips ``[B, T, S, S, 3]`` → the per-frame logits ``[B*T, classes]`` of T steps from a zero state."""

    def compute(clips: Tensor) -> Tensor:
        state = [z[None].expand(len(clips), *z.shape).contiguous() for z in zero]
        out = []
        for t in range(clips.shape[1]):
            logits, state = engine.step(clips[:, t].contiguous(), state)
            out.append(logits)
        return torch.stack(out, 1).flatten(0, 1)

    return compute


def _seconds_per_step(engine: LiveEngine, frames: Tensor, zero: list[Tensor], runs: int = 3) -> float:
    state = [z[None].expand(len(frames), *z.shape).contiguous() for z in zero]
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        engine.step(frames, state)
        best = min(best, time.perf_counter() - start)
    return best


def choose_live_engine(model: OnlineTSM, normalise: Normalise, size: int, arch: str, wanted: str, dtype: str,
                       threads: int) -> LiveEngine:  # fmt: skip
    """The step engine of one online model (rules: module docstring); ``size``: its input side. The
    engines to choose from run on the CPU: a model on another device steps with torch eager."""
    reference = torch_step(model, normalise)
    torch.set_flush_denormal(True)  # this thread times the engines: as the serving thread runs them
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu or wanted not in ("auto", "openvino") or not openvino_available():
        return reference
    zero = [s[0] for s in model.initial_state(1, size)]
    precisions = ["bfloat16", "float32"] if dtype in ("auto", "bfloat16") and cpu_has_native_bf16() else ["float32"]
    generator = torch.Generator().manual_seed(20190)
    clips = torch.randint(0, 256, (2, 3, size, size, 3), dtype=torch.uint8, generator=generator)
    for precision in precisions:
        try:
            engine = openvino_step(model, normalise, size, zero, precision, threads)
        except Exception as e:  # a conversion that fails costs a log line, never the model
            log.warning("live %s: openvino (%s) failed to convert (%s); trying the next engine", arch, precision,
                        type(e).__name__)  # fmt: skip
            continue
        verdict = verify(_stepped(engine, zero), _stepped(reference, zero), clips, arch, precision)
        if not verdict.ok:
            log.warning("live %s: %s refused by verification: %s", arch, engine.label, verdict.reason)
            continue
        frames = clips[:, 0].repeat(2, 1, 1, 1)  # four streams
        fast, slow = _seconds_per_step(engine, frames, zero), _seconds_per_step(reference, frames, zero)
        log.info("live %s: %s verified (max |Δ| %.2g ≤ %.2g), %.1f ms per step of 4 streams (torch %.1f ms)",
                 arch, engine.label, verdict.max_abs, verdict.bound, fast * 1e3, slow * 1e3)  # fmt: skip
        return engine if fast < slow else reference
    return reference
