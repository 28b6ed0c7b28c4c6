"""bench/gpu.sh before it meets a GPU: its dry run runs every phase's code on this CPU and writes each
phase's files; the record tool turns the folder into a RESULTS section; the wheel script is valid bash
and pins what we pin. Run as processes: tests never import bench/ (docs/architecture.md)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PHASES = ["p0_probe", "p1_nvdec", "p2_e2e", "p3_live", "p4_engines"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_dry_run_runs_every_phase_on_the_cpu_and_writes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=280,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    statuses = {p["phase"]: p["status"] for p in summary["phases"]}
    assert run.returncode == 0 and set(statuses.values()) == {"ok"}, (statuses, run.stdout[-4000:], run.stderr[-4000:])
    assert summary["dry_run"] is True and list(statuses) == ["P0 probe", "P1 nvdec", "P2 e2e", "P3 live", "P4 engines"]
    for stem in PHASES:
        for suffix in (".md", ".json", ".log"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0, f"{stem}{suffix} is empty"
        json.loads((out / f"{stem}.json").read_text())
    # The summary comes last in the output, and says where everything is.
    assert run.stdout.rstrip().splitlines()[-1].startswith("| P4 engines | ok |")
    assert f"results (in {out})" in (out / "summary.md").read_text()
    # On a machine without NVDEC the phase says so plainly rather than report PyAV's numbers as NVDEC's.
    nvdec = (out / "p1_nvdec.md").read_text()
    assert "NVDEC not used: " in nvdec or "NVDEC decoded every clip" in nvdec
    decoded_by = json.loads((out / "p2_e2e.json").read_text())["head"]["decoded_by"]
    assert set(decoded_by) == {"default/pyav", "default/nvdec", "naive"}
    assert decoded_by["default/pyav"] == "pyav"

    # The record tool: a dry run's folder is refused unless asked for; then every phase is in the section.
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    record = [sys.executable, "-m", "bench.gpu_record", str(out), "--results", str(results)]
    refused = subprocess.run(record, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "dry run" in refused.stderr
    subprocess.run([*record, "--allow-dry-run"], cwd=ROOT, check=True, capture_output=True, timeout=60)
    text = results.read_text()
    assert text.startswith("# Benchmark results\n") and "(dry run on CPU)" in text
    for heading in ("The machine", "NVDEC against CPU decoding", "End to end", "Live streams", "bench/gpu_bench.py"):
        assert f"#### {heading}" in text, heading


def test_the_scripts_are_valid_bash() -> None:
    for script in ("bench/gpu.sh", "bench/gpu_wheels.sh"):
        subprocess.run(["bash", "-n", script], cwd=ROOT, check=True, timeout=30)


def test_the_wheels_are_pinned_to_constraints_then_to_this_environment(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", "bench/gpu_wheels.sh", "--pins-only", str(tmp_path)], cwd=ROOT, env=env, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    pins = dict(line.split("==") for line in (tmp_path / "requirements.txt").read_text().split())
    constraints = {
        norm(m.group(1)): m.group(2)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if (m := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line))
    }
    # What the GPU machine lacks (issue #35), and never torch or numpy: its CUDA build must stay.
    wanted = {"av", "fastapi", "starlette", "pydantic", "pydantic-core", "pydantic-settings", "python-multipart",
              "uvicorn", "grpcio-health-checking", "grpcio-reflection", "websockets", "fastapi-offline"}  # fmt: skip
    assert wanted <= {norm(n) for n in pins} and not {"torch", "numpy"} & {norm(n) for n in pins}
    assert any(norm(n) in constraints for n in pins), "no package named by both: the check would prove nothing"
    for name, version in pins.items():
        expected = constraints.get(norm(name)) or importlib.metadata.version(name)
        assert version == expected, f"{name}: pinned {version}, expected {expected}"


def test_the_wheel_folder_is_ignored_so_only_the_carry_list_sends_it() -> None:
    assert subprocess.run(["git", "check-ignore", "-q", ".gpu-wheels/av.whl"], cwd=ROOT, timeout=30).returncode == 0
