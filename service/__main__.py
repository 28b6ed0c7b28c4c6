"""``tsm-serve``: run the server, or import a checkpoint into the model store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.model.tsm import CheckpointError
from service.store import StoreError, import_checkpoint


def _import_checkpoint(args: argparse.Namespace) -> int:
    entry = import_checkpoint(
        args.checkpoint,
        arch=args.arch,
        num_segments=args.num_segments,
        labels=args.labels,
        name=args.name,
        version=args.version,
        store=args.store,
        shift=not args.no_shift,
        shift_div=args.shift_div,
        shift_place=args.shift_place,
        width_mult=args.width_mult,
        input_size=args.input_size,
        scale_size=args.scale_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {entry}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsm-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    imp = commands.add_parser(
        "import-checkpoint",
        help="convert an official (mit-han-lab) or mmaction2 TSM checkpoint into a model store entry",
    )
    imp.add_argument("checkpoint", type=Path, help=".pth/.pt file (loaded with weights_only=True)")
    imp.add_argument("--arch", required=True, choices=["resnet50", "resnet101", "mobilenetv2"])
    imp.add_argument("--num-segments", type=int, required=True, help="frames per clip the model was trained on")
    imp.add_argument("--labels", required=True, help="labels file, or kinetics400 / something_something_v2")
    imp.add_argument("--name", required=True, help="model name in the store and in requests")
    imp.add_argument("--version", default="1")
    imp.add_argument("--store", type=Path, default=Path("model_store"))
    imp.add_argument("--shift-div", type=int, default=8)
    imp.add_argument("--shift-place", choices=["blockres", "block"], default="blockres")
    imp.add_argument("--no-shift", action="store_true", help="a plain TSN checkpoint (no temporal shift)")
    imp.add_argument("--width-mult", type=float, default=1.0, help="MobileNetV2 width multiplier")
    imp.add_argument("--input-size", type=int, default=224, help="crop side fed to the network")
    imp.add_argument("--scale-size", type=int, default=256, help="short side frames are resized to first")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing entry of that version")
    imp.set_defaults(run=_import_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (StoreError, CheckpointError) as e:
        print(f"tsm-serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
