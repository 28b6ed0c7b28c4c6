"""Build the tsm-serve wheel from the files the image's build context holds, into ``dist/`` (or ``--out``).

    python tools/build_wheel.py            # make wheel; the Dockerfile installs dist/tsm_serve-*.whl

The sources are copied to a fresh folder first: setuptools' ``build/`` folder in a checkout keeps files
that were moved or deleted since the last build, and they would ship. The environment's setuptools
builds it (no build isolation): no index is needed, so the installed-package test runs offline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "service")


def build_wheel(out: Path) -> Path:
    """The wheel's path; older tsm-serve wheels in ``out`` are removed so that one glob finds one file."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("tsm_serve-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="tsm-wheel-") as tmp:
        for name in SOURCES:
            source, target = ROOT / name, Path(tmp) / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), tmp],
            check=True,
        )
    (wheel,) = out.glob("tsm_serve-*.whl")
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    print(build_wheel(parser.parse_args().out))


if __name__ == "__main__":
    main()
