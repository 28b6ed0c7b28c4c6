"""Inference engines: each one reproduces the official logits, is verified before it serves, and its
disk cache never serves a damaged or wrong conversion. Real models, real OpenVINO conversions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from service.inference.devices import compiler_available
from service.inference.engine_cache import EngineCache, ModelIdentity
from service.inference.engines import (
    EngineChooser,
    cpu_has_native_bf16,
    openvino_available,
    seeded_clips,
    verify,
)
from service.inference.runner import Runner, RunnerConfig
from service.models.checkpoints import load_state_strict
from service.models.store import ModelConfig, build_model
from tests.support import ROOT
from tests.support.checkpoints import golden, golden_input, synthetic_state_dict
from tests.support.models import MEAN, SEGMENTS, SIZE, STD, random_clips, reference_logits, small_tsm

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")
TOLERANCE = {"resnet50": 1e-3, "mobilenetv2": 1e-4}  # the golden tolerances (tests/models/test_tsm.py)
IDENTITY = ModelIdentity("mobilenetv2", "ab" * 32, (SEGMENTS, SIZE, SIZE, 3))


def golden_model(arch: str) -> nn.Module:
    model = build_model(ModelConfig(name="g", version="1", weights_sha256="0" * 64, arch=arch, num_segments=8,
                                    num_classes=400))  # fmt: skip
    load_state_strict(model, synthetic_state_dict(arch))
    return model.eval()


def runner_for(model: nn.Module, cache: Path | None, *, identity: ModelIdentity | None = IDENTITY,
               size: int = SIZE, **config: object) -> Runner:  # fmt: skip
    """float32 unless ``dtype`` says otherwise: most checks here compare with the float32 reference closely."""
    config.setdefault("dtype", "float32")
    runner = Runner(model, mean=MEAN, std=STD, num_segments=SEGMENTS, input_size=size, identity=identity,
                    config=RunnerConfig(device="cpu", engine_cache_dir=cache, max_batch_clips=2, **config))  # type: ignore[arg-type]  # fmt: skip
    runner.warmup()
    return runner


@pytest.mark.parametrize("arch", ["resnet50", "mobilenetv2"])
def test_openvino_reproduces_the_official_logits(tmp_path: Path, arch: str) -> None:
    """torch eager is checked against the same fixtures in test_model.py."""
    engine = "openvino"
    identity = ModelIdentity(arch, "cd" * 32, (8, 224, 224, 3))
    runner = runner_for(golden_model(arch), tmp_path, identity=identity, size=224, engine=engine)
    assert runner.engine.name == engine and runner.engine.precision == "float32"
    logits = torch.from_numpy(runner.forward(golden_input(2).numpy()))
    runner.close()
    for case, rows in (("batch1", logits[:1]), ("batch2", logits)):
        expected = golden(arch)["cases"][case]
        torch.testing.assert_close(rows, torch.tensor(expected["logits_fp32"]), rtol=0, atol=TOLERANCE[arch])
        assert rows.topk(5).indices.tolist() == expected["top5_indices"]


def test_auto_takes_a_verified_engine_and_says_which(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = small_tsm()
    with caplog.at_level(logging.INFO):
        runner = runner_for(model, tmp_path, dtype="float32")
    assert runner.engine.name in ("openvino", "torch") and runner.engine.precision == "float32"
    assert "openvino verified" in caplog.text and f"engine {runner.engine.label} serves on cpu" in caplog.text
    clips = random_clips(3, seed=5)
    np.testing.assert_allclose(runner.forward(clips), reference_logits(model, clips), rtol=1e-4, atol=1e-5)
    runner.close()


def test_auto_prefers_bfloat16_where_the_cpu_has_it_natively(tmp_path: Path) -> None:
    """As float16 on a GPU: half precision by default where the hardware runs it, verified to its bound."""
    model = small_tsm()
    runner = runner_for(model, tmp_path, dtype="auto")
    clips = random_clips(2, seed=9)
    got, want = runner.forward(clips), reference_logits(model, clips)
    runner.close()
    if not cpu_has_native_bf16():
        assert runner.engine.precision == "float32"
        return
    assert runner.engine.label in ("openvino-bfloat16", "torch")  # torch only if it ran faster here
    if runner.engine.name == "openvino":
        assert np.abs(got - want).max() <= 5e-2 * max(1.0, float(np.abs(want).max()))
        assert (got.argmax(1) == want.argmax(1)).all()


def _only_entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


def test_a_restart_loads_the_cached_conversion_and_a_corrupted_one_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = runner_for(small_tsm(), tmp_path, engine="openvino")
    first.close()
    second = runner_for(small_tsm(), tmp_path, engine="openvino")
    second.close()
    assert not first.engine.cached and second.engine.cached
    entry = _only_entry(tmp_path)
    weights = entry / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # a silent flip of weights in the middle
    weights.write_bytes(bytes(data))
    model = small_tsm()
    with caplog.at_level(logging.WARNING):
        runner = runner_for(model, tmp_path, engine="openvino")
    assert "damaged or stale: rebuilding" in caplog.text
    assert runner.engine.name == "openvino" and not runner.engine.cached
    clips = random_clips(2, seed=6)
    np.testing.assert_allclose(runner.forward(clips), reference_logits(model, clips), rtol=1e-4, atol=1e-5)
    runner.close()
    manifest = json.loads((_only_entry(tmp_path) / "manifest.json").read_text())
    assert EngineCache(tmp_path).lookup(manifest["key"]) is not None  # the rebuilt entry is whole again


def test_an_intact_cache_entry_of_other_weights_fails_verification_and_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong conversion with a consistent manifest (a copied cache, a hash collision of keys):
    the logits check catches it."""
    runner_for(small_tsm(seed=1), tmp_path, engine="openvino").close()  # other weights, same key
    model = small_tsm(seed=0)
    with caplog.at_level(logging.WARNING):
        runner = runner_for(model, tmp_path, engine="openvino")
    assert "failed verification" in caplog.text and "rebuilding" in caplog.text
    assert runner.engine.name == "openvino" and not runner.engine.cached
    clips = random_clips(2, seed=7)
    np.testing.assert_allclose(runner.forward(clips), reference_logits(model, clips), rtol=1e-4, atol=1e-5)
    runner.close()


class BranchOnBrightness(nn.Module):
    """Data-dependent Python control flow: a tracing converter records only the branch its example
    input took (a classic silent conversion bug), so the converted engine computes the wrong thing."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        logits = self.inner(x)
        return logits if bool(x.mean() > -1.0) else -logits


def test_an_engine_that_fails_verification_is_refused_and_torch_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = BranchOnBrightness(small_tsm())
    with caplog.at_level(logging.WARNING):
        runner = runner_for(model, tmp_path, engine="openvino", identity=None)
    assert "engine openvino refused" in caplog.text and "falling back" in caplog.text
    assert runner.engine.name == "torch"
    clips = random_clips(3, seed=8)
    np.testing.assert_allclose(runner.forward(clips), reference_logits(model, clips), rtol=1e-4, atol=1e-5)
    runner.close()


def test_verification_rules() -> None:
    """Float32 engines: the golden tolerance and the same top-5; half precisions: 5e-2 and the same top-1."""
    clips = seeded_clips((SEGMENTS, SIZE, SIZE, 3), torch.device("cpu"))
    model = small_tsm()
    torch_ref = Runner(model, mean=MEAN, std=STD, num_segments=SEGMENTS, input_size=SIZE,
                       config=RunnerConfig(device="cpu"))  # fmt: skip
    reference = torch_ref._compute_reference
    with torch.inference_mode():
        scale = float(reference(clips).abs().max())

    def shifted(delta: float) -> object:
        return lambda x: reference(x) + delta

    assert verify(reference, reference, clips, "mobilenetv2", "float32").ok
    assert verify(shifted(0.5e-4 * max(1, scale)), reference, clips, "mobilenetv2", "float32").ok
    assert not verify(shifted(2e-4 * max(1, scale)), reference, clips, "mobilenetv2", "float32").ok
    assert verify(shifted(2e-4 * max(1, scale)), reference, clips, "resnet50", "float32").ok
    assert verify(shifted(1e-2 * max(1, scale)), reference, clips, "mobilenetv2", "bfloat16").ok
    assert not verify(lambda x: -reference(x), reference, clips, "mobilenetv2", "bfloat16").ok
    assert not verify(lambda x: reference(x)[:, :3], reference, clips, "mobilenetv2", "float32").ok
    assert not verify(lambda x: reference(x) * float("nan"), reference, clips, "mobilenetv2", "float32").ok
    torch_ref.close()


def test_bfloat16_is_served_by_openvino_within_its_documented_bound(tmp_path: Path) -> None:
    model = small_tsm()
    runner = runner_for(model, tmp_path, engine="openvino", dtype="bfloat16")
    if runner.engine.name != "openvino":  # a CPU without bfloat16 emulates it; refused is acceptable there
        pytest.skip("OpenVINO's bfloat16 failed verification on this CPU")
    assert runner.engine.precision == "bfloat16" and runner.engine.label == "openvino-bfloat16"
    clips = random_clips(2, seed=9)
    got, want = runner.forward(clips), reference_logits(model, clips)
    assert np.abs(got - want).max() <= 5e-2 * max(1.0, float(np.abs(want).max()))
    runner.close()


def test_an_unwritable_cache_costs_a_warning_not_the_engine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A read-only or misconfigured cache directory: convert at every start, say so, serve anyway."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    model = small_tsm()
    with caplog.at_level(logging.WARNING):
        runner = runner_for(model, blocked, engine="openvino")
    assert "is not writable" in caplog.text and "converted at every start" in caplog.text
    assert runner.engine.name == "openvino" and not runner.engine.cached
    clips = random_clips(2, seed=10)
    np.testing.assert_allclose(runner.forward(clips), reference_logits(model, clips), rtol=1e-4, atol=1e-5)
    runner.close()
    assert blocked.is_file()  # left as it was


def test_a_compile_that_fails_on_its_first_run_falls_back_to_eager_in_one_log_line() -> None:
    """``torch.compile`` compiles lazily, on the first call (verification, then each warm-up size): on a
    machine without a working C++ compiler (``CXX`` names none) the start used to fail. Its own process:
    the compiler is read when torch's inductor is first imported."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format='%(name)s %(message)s')\n"
        "from service.inference.runner import Runner, RunnerConfig\n"
        "from tests.support.models import MEAN, SEGMENTS, SIZE, STD, small_tsm\n"
        "config = RunnerConfig(device='cpu', engine='compile', max_batch_clips=2)\n"
        "runner = Runner(small_tsm(), mean=MEAN, std=STD, num_segments=SEGMENTS, input_size=SIZE, config=config)\n"
        "runner.warmup()\n"
        "print(runner.engine.label, sorted(runner.warmup_s))\n"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "torch [1, 2]", done.stdout
    ours = [line for line in done.stderr.splitlines() if line.startswith("tsm.engines engine compile")]
    assert len(ours) == 1 and ours[0].endswith("; falling back") and "C++ compiler" in ours[0], done.stderr


def cuda_chooser(wanted: str = "auto", cuda_graphs: bool = False) -> EngineChooser:
    """A chooser for a CUDA runner: which engines it would try is decided before any CUDA call."""
    model = small_tsm()
    return EngineChooser(wanted=wanted, dtype="auto", device=torch.device("cuda"), torch_precision="float16",
                         model=model, normalise=lambda x: x.float(), eager=model, reference=model, graphable=model,
                         identity=IDENTITY, clip_shape=(SEGMENTS, SIZE, SIZE, 3), threads=1, cache_dir=None,
                         cuda_graphs=cuda_graphs)  # fmt: skip


def test_auto_on_cuda_tries_compile_where_a_compiler_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    # Triton builds its launchers with $CC (else cc, gcc, clang): without one, compile is not tried.
    assert cuda_chooser().candidates() == [("compile", "float16"), ("torch", "float16")]
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert compiler_available() is None
    assert cuda_chooser().candidates() == [("torch", "float16")]
    assert cuda_chooser("compile").candidates() == [("compile", "float16")]  # asked for: tried, and may fall back
    assert cuda_chooser("openvino").candidates() == [("openvino", "float16")]  # refused by build() on CUDA


def test_compiled_artefacts_are_kept_beside_the_converted_engines(tmp_path: Path) -> None:
    """Building the compile engine points Inductor's caches to the engine cache folder (a volume in
    production), unless set already; Inductor then writes its code there. Its own process: the variable
    is read when inductor starts. (A tiny function is compiled, not the model: minutes on 2 cores.)"""
    code = (
        "import os, sys, torch\n"
        "from pathlib import Path\n"
        "from tests.inference.test_engines import cuda_chooser\n"
        "chooser = cuda_chooser('compile')\n"
        "chooser.cache_dir = Path(sys.argv[1])\n"
        "chooser.build('compile', 'float32')\n"
        "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])\n"
        "torch.compile(lambda x: x * 2 + 1)(torch.ones(4))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(tmp_path / "inductor"), done.stdout
    assert any((tmp_path / "inductor").rglob("*.py")), "inductor wrote its compiled code there"
