#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the wheels bench/gpu.sh's phase P0 installs on a lent GPU
# machine, which has Python 3.12 and its own CUDA build of torch but none of our serving stack and no
# network. Pinned to our versions: constraints.txt first, then what .venv has installed.
#
#   bash bench/gpu_wheels.sh                   # -> .gpu-wheels/ (gitignored; the device call carries it)
#   bash bench/gpu_wheels.sh DIR               # elsewhere
#   bash bench/gpu_wheels.sh --pins-only DIR   # only DIR/requirements.txt and DIR/constraints.txt
#   PYTHON=/path/to/python bash bench/gpu_wheels.sh   # pins from that environment instead of .venv
#
# What: the server's dependencies as pyproject.toml declares them, with their dependencies, plus the
# parts of uvicorn[standard] it uses (httptools, uvloop, websockets for the live WebSocket). Not
# fetched: torch (the machine's CUDA build must stay), numpy (comes with it there), openvino/onnx (CPU
# engine only), redis (optional), decord (13.6 MB), watchfiles and pyyaml (uvicorn[standard] extras
# the server never uses). grpcio and protobuf are fetched: the generated stubs need our protobuf, and
# grpcio must match grpcio-health-checking/-reflection.
#
# The device tool carries at most 64 MiB (working tree + carry paths), and PyAV's wheel alone is
# 34 MiB (FFmpeg inside). So wheels over 1 MiB are recompressed with LZMA: still zip files with the
# same members and RECORD (zip method 14, which Python's zipfile, and so pip, reads), ~25% smaller.
# The script prints the total and fails over 60 MiB (2026-12-07: 57.8 MiB; the first thing to drop is
# uvloop from EXTRA, 3.2 MiB: uvicorn then runs on asyncio's own loop).
set -euo pipefail
cd "$(dirname "$0")/.."
PINS_ONLY=0
if [ "${1:-}" = "--pins-only" ]; then PINS_ONLY=1; shift; fi
DEST=${1:-.gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
EXCLUDE="torch numpy openvino onnx redis"
EXTRA="starlette pydantic-core h11 httptools uvloop websockets"
LIMIT_MIB=60

mkdir -p "$DEST"
# One pin per package, names normalised (PEP 503): constraints.txt wins over the environment.
"$PY" - "$DEST" "$EXCLUDE" "$EXTRA" <<'PYTHON'
import re, subprocess, sys, tomllib
from pathlib import Path

dest, exclude, extra = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
declared = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
names = [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in declared]  # "uvicorn[standard]>=0.29" -> uvicorn
wanted = [n for n in names if norm(n) not in map(norm, exclude)] + [n for n in extra if norm(n) not in map(norm, names)]
pins: dict[str, str] = {}
freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
for source in (freeze, Path("constraints.txt").read_text()):
    for line in source.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m and "+" not in m.group(2):  # local builds (torch+cpu) are not on PyPI
            pins[norm(m.group(1))] = m.group(2)
missing = [w for w in wanted if norm(w) not in pins]
if missing:
    sys.exit(f"gpu_wheels.sh: no pinned version for {missing} in {sys.executable}'s environment or constraints.txt")
# requirements: the packages asked for; constraints: every pin, so that their dependencies are ours too.
(dest / "requirements.txt").write_text("".join(f"{w}=={pins[norm(w)]}\n" for w in wanted))
skip = {"torch", "numpy", "triton"}
(dest / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n not in skip))
PYTHON
if [ "$PINS_ONLY" = 1 ]; then cat "$DEST/requirements.txt"; exit 0; fi

fetch() {
  # PIP_CONFIG_FILE: this machine's own pip settings (local indexes, constraints) stay out of it.
  PIP_CONFIG_FILE=/dev/null "$PY" -m pip download --quiet --dest "$DEST" --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
    -r "$DEST/requirements.txt" -c "$DEST/constraints.txt"
  # A wheel left over from an earlier pin would be installed beside the new one: keep only the pinned.
  # Then recompress the big ones (see the header), two at a time.
  "$PY" - "$DEST" <<'PYTHON'
import re, sys, zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def recompress(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        if all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist()):
            return f"{wheel.name}: already LZMA"
        tmp = wheel.with_suffix(".lzma-tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as out:
            for info in z.infolist():
                data = z.read(info)  # before the type changes: it says how to read the member
                info.compress_type = zipfile.ZIP_LZMA
                out.writestr(info, data)
    before = wheel.stat().st_size
    tmp.replace(wheel)
    return f"{wheel.name}: {before / 2**20:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB (LZMA)"


if __name__ == "__main__":
    dest = Path(sys.argv[1])
    pins = dict(line.split("==") for line in (dest / "constraints.txt").read_text().split())
    for wheel in dest.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if pins.get(re.sub(r"[-_.]+", "-", name).lower(), version) != version:
            print(f"removing {wheel.name} (not the pinned version)")
            wheel.unlink()
    big = [w for w in sorted(dest.glob("*.whl")) if w.stat().st_size > 2**20]
    with ProcessPoolExecutor(2) as pool:
        for line in pool.map(recompress, big):
            print(line)
PYTHON
}

# Done before for these pins: pip would see the recompressed wheels' hashes differ from PyPI's and
# fetch them again.
pins=$(cat "$DEST/requirements.txt" "$DEST/constraints.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$DEST/.done" 2>/dev/null)" = "$pins" ]; then
  echo "$DEST already holds the wheels of these pins"
else
  fetch
  echo "$pins" > "$DEST/.done"
fi

# What the device call sends: the working tree as git sees it (tracked + untracked, not ignored) + DEST.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
wheels=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
total=$((tree + wheels))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST: $(mib "$wheels"); working tree $(mib "$tree"); together $(mib "$total")"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels.sh: over ${LIMIT_MIB} MiB: the device call would not carry it" >&2
  exit 1
fi
