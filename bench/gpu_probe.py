"""P0 of ``bench/gpu.sh``: install the carried wheels, then say what this machine is.

    python -m bench.gpu_probe --out DIR --wheels .gpu-wheels --site /tmp/tsm-gpu-site
    python -m bench.gpu_probe --out DIR --no-install        # the dry run: probe only

Install: ``pip install --no-index --target SITE`` of ``WHEELS/requirements.txt`` (written by
``bench/gpu_wheels.sh``), so the machine's own torch is never touched, nothing is fetched, and no
system site-packages change; ``bench/gpu.sh`` puts SITE first on ``PYTHONPATH`` for every later
phase (and the servers they start). Without pip the wheels are unpacked (a wheel is a zip). Done
once per set of wheels: a second call on a warm machine reuses SITE.

Probe: card, driver, memory (``nvidia-smi``), NVDEC engines (``nvidia-smi -q``'s decoder lines; the
count from the card's name where known), a C compiler (torch.compile's inductor needs one), Python,
torch, CUDA, cuDNN, triton, PyAV and FFmpeg's hardware devices, numpy/grpc/protobuf, and whether each
module the server imports is importable. Writes ``p0_probe.json`` and ``p0_probe.md``; exits 1 when
the install failed or a module the server needs is missing.

Only the standard library is imported at the top: the install runs before anything else is there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

# What the server and the benches import, beyond torch and numpy (the machine's own).
SERVER_MODULES = [
    "av", "fastapi", "fastapi_offline", "starlette", "pydantic", "pydantic_core", "pydantic_settings",
    "multipart", "uvicorn", "grpc", "grpc_health", "grpc_reflection", "google.protobuf", "websockets",
    "prometheus_client", "safetensors", "httpx", "opentelemetry.sdk.trace",
]  # fmt: skip
# NVDEC engines per card (NVIDIA's Video Codec SDK support matrix); nvidia-smi does not report the count.
NVDEC_ENGINES = {"H200": 7, "H100": 7, "GH200": 7, "A100": 5, "A30": 4, "L40S": 3, "L40": 3, "L4": 4, "T4": 2}


def run(cmd: list[str], timeout: float = 20) -> tuple[int, str]:
    """Exit status and output (stdout + stderr); 127 when the command is not there."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        return 127, f"{cmd[0]}: not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]}: no answer in {timeout:g} s"
    return out.returncode, (out.stdout + out.stderr).strip()


# ----------------------------------------------------------------------------------- install
def wheels_key(wheels: Path) -> str:
    h = hashlib.sha256()
    for path in [*sorted(wheels.glob("*.whl")), wheels / "requirements.txt", wheels / "constraints.txt"]:
        h.update(path.name.encode())
        h.update(str(path.stat().st_size if path.exists() else -1).encode())
    return h.hexdigest()[:16]


def install(wheels: Path, site: Path) -> dict[str, Any]:
    """Installs the wheels into ``site``; reuses it when it holds the same set already."""
    start = time.monotonic()
    requirements = wheels / "requirements.txt"
    if not requirements.exists():
        return {"ok": False, "how": f"no {requirements}: run `bash bench/gpu_wheels.sh` before the device call "
                                    "and carry .gpu-wheels"}  # fmt: skip
    key, stamp = wheels_key(wheels), site / ".tsm-wheels-key"
    if stamp.exists() and stamp.read_text() == key:
        return {"ok": True, "how": f"already in {site} (same wheels)", "seconds": 0.0}
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    if run([sys.executable, "-m", "pip", "--version"])[0] == 0:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
               "--target", str(site), "--disable-pip-version-check", "--no-warn-script-location",
               "-r", str(requirements), "-c", str(wheels / "constraints.txt")]  # fmt: skip
        # The machine's pip configuration (an index, constraints of its own) must not change what installs.
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
        ok, how = out.returncode == 0, "pip install --no-index --target"
        detail = (out.stdout + out.stderr).strip()[-2000:]
    else:
        for wheel in sorted(wheels.glob("*.whl")):  # a wheel is a zip of site-packages' layout
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
        ok, how, detail = True, "unzipped (no pip for this Python)", ""
    if ok:
        stamp.write_text(key)
    return {"ok": ok, "how": f"{how} into {site}", "detail": detail, "seconds": round(time.monotonic() - start, 1)}


# ------------------------------------------------------------------------------------- probe
def version_of(module: str) -> dict[str, Any]:
    try:
        m = importlib.import_module(module)
    except Exception as e:  # a missing module, or one whose import fails (a wrong ABI)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    return {"ok": True, "version": str(getattr(m, "__version__", "")), "from": str(getattr(m, "__file__", ""))}


def gpu_facts() -> dict[str, Any]:
    fields = "name,memory.total,driver_version,clocks.max.sm,compute_cap,pci.bus_id"
    code, out = run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"])
    facts: dict[str, Any] = {"nvidia_smi": out if code else ""}
    if code == 0 and out:
        cards = [dict(zip(fields.split(","), (x.strip() for x in line.split(",")), strict=False))
                 for line in out.splitlines()]  # fmt: skip
        facts["cards"] = cards
        name = cards[0].get("name", "")
        known = next((n for key, n in sorted(NVDEC_ENGINES.items(), key=lambda kv: -len(kv[0])) if key in name), None)
        facts["nvdec_engines"] = known
        facts["nvdec_engines_source"] = "the card's name (NVIDIA's support matrix)" if known else "unknown card"
        code, query = run(["nvidia-smi", "-q"])
        lines = query.splitlines()
        # Decoder utilisation and session lines: how busy the NVDEC engines are, not how many there are.
        facts["nvidia_smi_decoder_lines"] = [
            " ".join(x.split()) for i, line in enumerate(lines) if "decoder" in line.lower()
            for x in lines[i : i + 4]
        ][:24]  # fmt: skip
    return facts


def compiler() -> dict[str, Any]:
    found = {name: shutil.which(name) for name in ("cc", "gcc", "g++", "clang")}
    first = next((p for p in found.values() if p), None)
    version = run([first, "--version"])[1].splitlines()[0] if first else ""
    return {"found": {k: v for k, v in found.items() if v}, "version": version, "present": first is not None}


def torch_facts() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    facts: dict[str, Any] = {
        "ok": True, "version": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads(),
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(props.total_memory / 2**30, 1), devices=torch.cuda.device_count(),
            cudnn=torch.backends.cudnn.version(),
        )  # fmt: skip
    facts["triton"] = version_of("triton")
    return facts


def av_facts() -> dict[str, Any]:
    facts = version_of("av")
    if facts["ok"]:
        import av

        facts["hwdevices"] = list(av.codec.hwaccel.hwdevices_available())
        facts["ffmpeg"] = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
        facts["h264_decoders"] = sorted(c for c in av.codecs_available if "h264" in c)
    return facts


def probe() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    host = {"cores": cores, "memory_gib": round(mem_gib, 1), "platform": platform.platform(),
            "python": sys.version.split()[0], "executable": sys.executable}  # fmt: skip
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": host,
        "gpu": gpu_facts(),
        "compiler": compiler(),
        "torch": torch_facts(),
        "av": av_facts(),
        "versions": {m: version_of(m) for m in ("numpy", "grpc", "google.protobuf", "decord")},
        "server_modules": {m: version_of(m)["ok"] for m in SERVER_MODULES},
    }


def markdown(facts: dict[str, Any], installed: dict[str, Any]) -> str:
    t, gpu, av_ = facts["torch"], facts["gpu"], facts["av"]
    card = (gpu.get("cards") or [{}])[0]
    missing = [m for m, ok in facts["server_modules"].items() if not ok]
    rows = [
        ("card", f"{card.get('name', 'no NVIDIA GPU (' + (gpu['nvidia_smi'] or 'nvidia-smi: no output') + ')')}"
                 + (f", {card.get('memory.total')}, compute {card.get('compute_cap')}" if card else "")),
        ("driver", card.get("driver_version", "-")),
        ("NVDEC engines", f"{gpu.get('nvdec_engines') or '?'} ({gpu.get('nvdec_engines_source', 'no card')})"),
        ("host", f"{facts['host']['cores']} cores, {facts['host']['memory_gib']} GiB, {facts['host']['platform']}"),
        ("C compiler", facts["compiler"]["version"] or "none (torch.compile's inductor cannot build kernels)"),
        ("Python", facts["host"]["python"]),
        ("torch", f"{t.get('version', t.get('error'))}, CUDA {t.get('cuda')}, cuDNN {t.get('cudnn', '-')}, "
                  f"CUDA available: {t.get('cuda_available')}"),
        ("triton", t.get("triton", {}).get("version") or "not importable"),
        ("PyAV", f"{av_.get('version', av_.get('error'))}, FFmpeg hardware devices: {av_.get('hwdevices', '-')}"),
        ("numpy / grpc / protobuf", " / ".join(facts["versions"][m].get("version") or "missing"
                                               for m in ("numpy", "grpc", "google.protobuf"))),
        ("wheels", f"{installed.get('how', '-')}" + (f" ({installed['seconds']} s)" if "seconds" in installed else "")),
        ("server modules", "all importable" if not missing else f"missing: {', '.join(missing)}"),
    ]  # fmt: skip
    table = [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(["### The machine (`bench/gpu_probe.py`)", "", "| | |", "| --- | --- |", *table]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for p0_probe.json and p0_probe.md")
    p.add_argument("--wheels", type=Path, default=Path(".gpu-wheels"))
    p.add_argument("--site", type=Path, default=Path("/tmp/tsm-gpu-site"), help="where the wheels are installed")
    p.add_argument("--no-install", action="store_true", help="probe only (the dry run)")
    p.add_argument("--require-cuda", action="store_true", help="exit 1 when torch sees no CUDA device")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    installed = {"ok": True, "how": "skipped (--no-install)"} if a.no_install else install(a.wheels, a.site)
    print(f"wheels: {installed['how']}", flush=True)
    if not installed["ok"]:
        print(installed.get("detail", ""), file=sys.stderr, flush=True)
    elif str(a.site) not in sys.path and not a.no_install:
        sys.path.insert(0, str(a.site))  # gpu.sh sets PYTHONPATH for the later phases; this process started first
    importlib.invalidate_caches()
    facts = probe()
    facts["install"] = installed
    (a.out / "p0_probe.json").write_text(json.dumps(facts, indent=2) + "\n")
    text = markdown(facts, installed)
    (a.out / "p0_probe.md").write_text(text)
    print(text, flush=True)
    problems = [f"missing: {m}" for m, ok in facts["server_modules"].items() if not ok]
    if not facts["torch"]["ok"]:
        problems.append("torch is not importable")
    elif a.require_cuda and not facts["torch"]["cuda_available"]:
        problems.append("torch sees no CUDA device")
    if not installed["ok"]:
        problems.append("the wheels did not install")
    for problem in problems:
        print(f"P0: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
