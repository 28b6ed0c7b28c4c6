"""Regenerates the committed gRPC stubs in service/api/pb from proto/ (grpcio-tools).

    python tools/gen_proto.py           # rewrite the stubs under service/api/pb (ours and the vendored OIP)
    python tools/gen_proto.py --check   # exit 1 when the committed stubs differ from a fresh build

``-Iservice/api/pb=proto`` makes the generated imports read ``from service.api.pb.tsm.v1 import ...``,
so the stubs work inside our package without touching ``sys.path``.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = [
    "proto/tsm/v1/classifier.proto",
    "proto/inference/open_inference_grpc.proto",
    "proto/inference/model_statistics.proto",
]
PACKAGE = Path("service/api/pb")


def generate(out: Path) -> list[Path]:
    """Writes the stubs under ``out`` (mirroring the repository layout) and returns their paths."""
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE}={ROOT / 'proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(ROOT / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    stubs = []
    for proto in map(Path, PROTOS):
        folder = out / PACKAGE / proto.parent.relative_to("proto")
        stubs += [folder / f"{proto.stem}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return stubs


def check() -> list[str]:
    """Names of committed stubs that a fresh generation would change."""
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for fresh in generate(Path(tmp)):
            committed = ROOT / fresh.relative_to(tmp)
            if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                stale.append(str(committed.relative_to(ROOT)))
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation; change nothing")
    if parser.parse_args().check:
        stale = check()
        if stale:
            print(f"stale stubs: {', '.join(stale)}; run python tools/gen_proto.py", file=sys.stderr)
            return 1
        print("stubs are up to date")
        return 0
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
