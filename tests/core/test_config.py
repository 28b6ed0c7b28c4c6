"""Settings: environment variables, command-line flags (which win), validation, and the narrow
configuration each part of the server is built from."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import __version__
from service.__main__ import build_parser, settings_from_args
from service.classify.options import RequestLimits
from service.core.config import Settings, available_cores
from service.core.logs import configure_logging
from service.inference.batching import BatcherConfig
from service.inference.runner import RunnerConfig
from service.video.probe import DecodeLimits
from tests.support import ROOT


def test_settings_come_from_env_and_flags() -> None:
    help_text = subprocess.run(
        [ROOT / ".venv/bin/tsm-serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for flag in ("--host", "--http-port", "--grpc-port", "--model-store", "--default-model", "--max-batch-clips"):
        assert flag in help_text
    assert Settings(http_port=9000).http_port == 9000


def test_a_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSM_HTTP_PORT", "8100")
    monkeypatch.setenv("TSM_MAX_DELAY_MS", "25")
    monkeypatch.setenv("TSM_MODELS", json.dumps(["a", "b"]))
    settings = settings_from_args(build_parser().parse_args(["--http-port", "8200", "--no-channels-last"]))
    assert settings.http_port == 8200, "the flag wins"
    assert settings.max_delay_ms == 25.0 and settings.models == ["a", "b"], "the environment fills the rest"
    assert settings.channels_last is False
    assert settings_from_args(build_parser().parse_args([])).http_port == 8100


def test_server_flags_work_after_the_serve_command_too(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--http-port", "8300", "serve", "--grpc-port", "0", "--model-store", str(tmp_path)]
    )
    settings = settings_from_args(args)
    assert (settings.http_port, settings.grpc_port, settings.store.path) == (8300, 0, tmp_path)


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"tsm-serve {__version__}"


def test_every_setting_has_a_flag_with_its_env_name_and_default() -> None:
    help_text = build_parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert f"TSM_{name.upper()}" in help_text


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"http_tls_cert_file": "cert.pem"}, "http_tls_key_file"),
     ({"grpc_tls_key_file": "key.pem"}, "grpc_tls_cert_file"), ({"max_batch_clips": 0}, "max_batch_clips"),
     ({"dtype": "float64"}, "dtype"), ({"http_port": 70000}, "http_port"),
     ({"decode_memory_mb": 100}, "decode_memory_mb")],
)  # fmt: skip
def test_invalid_settings_are_refused_by_name(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**kwargs)


def test_the_cpu_budget_is_split_without_oversubscribing() -> None:
    split = Settings(cpu_budget=8).cpu_split(accelerator=False)
    assert (split.inference_threads, split.decode_workers, split.decode_threads) == (8, 8, 1)
    assert "CPU budget 8 core(s): inference 8 thread(s), decoding 8 worker(s)" in split.describe()
    # Decode workers follow the model: a heavy one (0.4 s a clip) is kept busy by one, a light one
    # (0.02 s) needs more than the budget has, a middling one (0.05 s) four.
    assert Settings(cpu_budget=8).cpu_split(False, seconds_per_clip=0.4).decode_workers == 1
    assert Settings(cpu_budget=8).cpu_split(False, seconds_per_clip=0.02).decode_workers == 8
    assert Settings(cpu_budget=8).cpu_split(False, seconds_per_clip=0.05).decode_workers == 4
    assert Settings(cpu_budget=8, decode_threads=2).cpu_split(False, 0.02).decode_workers == 4
    # On a GPU host the server process keeps its own cores (event loop, the thread feeding the device), the
    # CPU decoders get the rest, NVDEC workers twice as many (they mostly wait on the GPU's decoder).
    on_gpu = Settings(cpu_budget=8).cpu_split(accelerator=True, seconds_per_clip=0.001)
    assert (on_gpu.main_cores, on_gpu.inference_threads, on_gpu.decode_workers) == (2, 1, 6)
    assert "server process 2 core(s), inference 1 thread(s), decoding 6 worker(s)" in on_gpu.describe()
    assert Settings(cpu_budget=16).cpu_split(True, nvdec=True).decode_workers == 28
    assert Settings(cpu_budget=16).cpu_split(True).decode_workers == 14
    small_gpu_host = Settings(cpu_budget=2).cpu_split(True)
    assert (small_gpu_host.main_cores, small_gpu_host.decode_workers) == (1, 1)
    assert Settings(cpu_budget=6, torch_threads=1, decode_workers=5).cpu_split(False).decode_workers == 5
    one_core = Settings(cpu_budget=1).cpu_split(False)
    assert (one_core.inference_threads, one_core.decode_workers) == (1, 1)
    machine = Settings().cpu_split(False)
    assert machine.budget == available_cores() >= 1
    assert machine.inference_threads <= machine.budget and machine.decode_workers <= machine.budget


def test_settings_that_oversubscribe_are_refused_with_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"TSM_TORCH_THREADS = 6 threads on 4 core\(s\) \(TSM_CPU_BUDGET as set\)"):
        Settings(cpu_budget=4, torch_threads=6).cpu_split(accelerator=False)
    with pytest.raises(ValueError, match=r"TSM_DECODE_WORKERS × TSM_DECODE_THREADS = 6 threads on 4 core"):
        Settings(cpu_budget=4, decode_workers=3, decode_threads=2).cpu_split(accelerator=False)
    too_many = Settings(torch_threads=available_cores() + 1)
    with pytest.raises(ValueError, match="from this machine"):
        too_many.cpu_split(accelerator=False)


def test_available_cores_follow_affinity() -> None:
    assert available_cores() <= len(os.sched_getaffinity(0))


def test_each_part_gets_its_own_settings_and_nothing_else() -> None:
    s = Settings(device="cpu", dtype="float32", torch_threads=2, channels_last=False, max_batch_clips=4,
                 max_delay_ms=7, max_queue_clips=9, request_timeout_s=11, max_upload_bytes=1234, max_clips=3,
                 decode_timeout_s=5, decode_memory_mb=1024, decode_max_jobs=17, max_windows=21)  # fmt: skip
    assert RunnerConfig.from_settings(s) == RunnerConfig(
        device="cpu", dtype="float32", torch_threads=2, channels_last=False, engine="auto", cuda_graphs=False,
        max_batch_clips=4,
    )  # fmt: skip
    assert RunnerConfig.from_settings(Settings(torch_threads=0), torch_threads=3).torch_threads == 3
    assert BatcherConfig.from_settings(s) == BatcherConfig(max_delay_ms=7, max_queue_clips=9, request_timeout_s=11)
    assert RequestLimits.from_settings(s) == RequestLimits(
        max_upload_bytes=1234, max_clips=3, request_timeout_s=11, max_windows=21
    )
    limits = DecodeLimits.from_settings(s)
    assert (limits.timeout_s, limits.memory_mb, limits.max_jobs) == (5, 1024, 17)


def test_narrow_config_defaults_are_the_settings_defaults() -> None:
    """A part built without Settings (benches, tests) behaves as the server's default configuration."""
    defaults = Settings.model_construct()
    assert RunnerConfig() == RunnerConfig.from_settings(defaults)
    assert BatcherConfig() == BatcherConfig.from_settings(defaults)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_logging_goes_to_one_root_handler_uvicorn_included(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", fmt)
        logging.getLogger("tsm.request").info("request", extra={"request_id": "r1", "outcome": "ok"})
        logging.getLogger("uvicorn.error").warning("uvicorn speaks %s", "too")
        logging.getLogger("tsm").debug("below the level")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    if fmt == "json":
        first, second = (json.loads(line) for line in lines)
        assert (first["logger"], first["message"], first["request_id"], first["outcome"]) == (
            "tsm.request", "request", "r1", "ok",
        )  # fmt: skip
        assert first["level"] == "info" and first["ts"].endswith("Z")
        assert (second["logger"], second["message"], second["level"]) == (
            "uvicorn.error",
            "uvicorn speaks too",
            "warning",
        )
    else:
        assert "INFO tsm.request: request" in lines[0] and "WARNING uvicorn.error: uvicorn speaks too" in lines[1]
