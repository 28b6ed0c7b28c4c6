"""``tsm-serve``: run the server (the default command), or import a checkpoint into the model store.

Every server flag mirrors a ``TSM_*`` environment variable (``--http-port`` = ``TSM_HTTP_PORT``);
a flag wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from service import __version__
from service.core.config import Settings
from service.core.logs import configure_logging

log = logging.getLogger("tsm")


# --------------------------------------------------------------------------------------- serve
class _Uvicorn(uvicorn.Server):
    """Uvicorn whose first SIGTERM/SIGINT starts our drain instead of closing at once."""

    def __init__(self, config: uvicorn.Config, on_first_signal: Callable[[], None]):
        super().__init__(config)
        self._on_first_signal = on_first_signal
        self._signalled = False

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        if self._signalled:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._on_first_signal()


async def serve(settings: Settings) -> int:
    """HTTP (uvicorn) and gRPC (grpc.aio) in this one event loop, over one Server (``service.runtime``).

    SIGTERM: gRPC health turns NOT_SERVING and readiness false, new work is refused (503 /
    UNAVAILABLE), in-flight requests of both protocols get ``drain_timeout_s`` to finish, then both
    servers stop and the process exits 0. A second signal stops at once."""
    from service.core.limits import connection_cap, raise_open_file_limit
    from service.runtime import STOP_GRACE_S, Runtime

    files = raise_open_file_limit()  # before the ports' connection caps are derived from it
    runtime = Runtime(settings)
    log.info("open-file limit %d; each port holds at most %d connections", files,
             connection_cap(settings.max_connections))  # fmt: skip
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(
        runtime.app, host=settings.host, port=settings.http_port, lifespan="off", log_config=None,
        log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=STOP_GRACE_S,
        ssl_certfile=settings.http_tls_cert_file, ssl_keyfile=settings.http_tls_key_file, **runtime.uvicorn_options(),
    )  # fmt: skip
    try:
        grpc_port = runtime.listen_grpc()
    except (ValueError, OSError, RuntimeError) as e:  # TLS files, or the port is taken
        print(f"tsm-serve: error: gRPC on {settings.host}:{settings.grpc_port}: {e}", file=sys.stderr)
        await runtime.rpc.stop(0)
        return 1
    exit_code = 0

    async def shut_down() -> None:
        await runtime.drain()
        web.should_exit = True

    def on_signal() -> None:
        log.info("signal received: draining (budget %.0f s)", settings.drain_timeout_s)
        loop.call_soon_threadsafe(lambda: background.add(loop.create_task(shut_down())))

    async def start() -> None:
        nonlocal exit_code
        try:
            await runtime.start()
        except Exception:
            exit_code = 1
            web.should_exit = True
            return
        log.info("ready: http://%s:%d, gRPC %s:%d", settings.host, settings.http_port, settings.host, grpc_port)

    web = _Uvicorn(config, on_signal)
    background = {loop.create_task(start())}
    try:
        await web.serve()
    finally:
        for task in background:
            task.cancel()
        await runtime.stop(0 if web.force_exit else STOP_GRACE_S)  # forced (Ctrl-C again): no grace
    if runtime.server.startup_error:
        print(f"tsm-serve: error: {runtime.server.startup_error}", file=sys.stderr)
    return exit_code


# ------------------------------------------------------------------------------------- the CLI
def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, typed and documented from the field itself."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or ''} [env TSM_{name.upper()}, default {field.get_default()!r}]".strip()
        help_text = help_text.replace("%", "%%")  # argparse formats help strings with %
        kind = field.annotation
        args: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(kind)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **args)
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), **args)
        elif origin is list:
            parser.add_argument(flag, nargs="*", metavar="NAME", **args)
        elif origin is dict:
            parser.add_argument(flag, type=json.loads, metavar="JSON", **args)
        elif kind is int:
            parser.add_argument(flag, type=int, **args)
        elif kind is float:
            parser.add_argument(flag, type=float, **args)
        else:  # str, Path, Path | None
            parser.add_argument(flag, **args)


def _import_checkpoint(args: argparse.Namespace) -> int:
    from service.models.checkpoints import CheckpointError
    from service.models.importing import import_checkpoint
    from service.models.store import StoreError

    try:
        entry = import_checkpoint(
            args.checkpoint, arch=args.arch, num_segments=args.num_segments, labels=args.labels, name=args.name,
            version=args.version, store=args.store, shift=not args.no_shift, shift_div=args.shift_div,
            shift_place=args.shift_place, width_mult=args.width_mult, input_size=args.input_size,
            scale_size=args.scale_size, overwrite=args.overwrite, online=args.online,
        )  # fmt: skip
    except (StoreError, CheckpointError) as e:
        print(f"tsm-serve: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {entry}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsm-serve",
        description="Serve TSM video classification over HTTP (and gRPC). With no command, runs the server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_settings_flags(parser)
    commands = parser.add_subparsers(dest="command")
    # The server's flags work before and after `serve` (`tsm-serve serve --http-port 9000`).
    _add_settings_flags(commands.add_parser("serve", help="run the server (the default)"))

    imp = commands.add_parser(
        "import-checkpoint",
        help="convert an official (mit-han-lab), mmaction2 or official online-demo TSM checkpoint into a model "
        "store entry",
    )
    imp.add_argument("checkpoint", type=Path, help=".pth/.pt file (loaded with weights_only=True)")
    imp.add_argument("--arch", required=True, choices=["resnet50", "resnet101", "mobilenetv2"])
    imp.add_argument("--num-segments", type=int, help="frames per clip the model was trained on (offline models)")
    imp.add_argument("--labels", required=True,
                     help="labels file, or a bundled list: kinetics400, something-something-v2, jester")  # fmt: skip
    imp.add_argument("--name", required=True, help="model name in the store and in requests")
    imp.add_argument("--version", default="1")
    imp.add_argument("--store", type=Path, default=Path("model_store"),
                     help="the store to write into (created if missing); serve it with TSM_MODEL_STORE, or from "
                     "the folder that holds it")  # fmt: skip
    imp.add_argument("--shift-div", type=int, default=8)
    imp.add_argument("--shift-place", choices=["blockres", "block"], default="blockres")
    imp.add_argument("--no-shift", action="store_true", help="a plain TSN checkpoint (no temporal shift)")
    imp.add_argument("--width-mult", type=float, default=1.0, help="MobileNetV2 width multiplier")
    imp.add_argument("--input-size", type=int, default=224, help="crop side fed to the network")
    imp.add_argument("--scale-size", type=int, default=256, help="short side frames are resized to first")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing entry of that version")
    imp.add_argument("--online", action="store_true",
                     help="a checkpoint trained with the one-sided (online) shift, for live streams; the online "
                     "demo's format is recognised without it")  # fmt: skip
    imp.set_defaults(run=_import_checkpoint)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with every flag given on the command line winning over it."""
    return Settings(**{name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)})


def main(argv: list[str] | None = None) -> int:
    """torch and the server are imported only once they are needed: ``--help`` and a settings
    error answer at once."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "import-checkpoint":
            return int(args.run(args))
        settings = settings_from_args(args)
        configure_logging(settings.log_level, settings.log_format)
        return asyncio.run(serve(settings))
    except ValidationError as e:
        print(f"tsm-serve: invalid settings: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
