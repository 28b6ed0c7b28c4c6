"""The decode worker process: a fresh interpreter without torch that decodes one job at a time.

Started by ``service.video.pool`` as ``python -c BOOT <fd> <parent pid> <memory MB> <root>``; it
caps its own memory, dies with its parent, and answers each JSON job on its socket with a JSON header,
then the raw frame bytes.

The memory cap is ``RLIMIT_DATA`` (heap and private writable mappings: every decoded frame and every
numpy array), not ``RLIMIT_AS``: CUDA reserves tens of GiB of address space it never touches, so an
address-space cap makes ``cuInit`` (NVDEC) fail, while the data cap still stops a decompression bomb.
It imports only the decoders, numpy and ``service.video.decode`` (which keeps ``service.core.errors``
free of grpc for this reason).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from service.core.errors import ErrorKind, ServiceError
from service.video.probe import DecodeLimits, MiB
from service.video.sampling import SamplingSpec

BOOT = "import sys; sys.path.insert(0, sys.argv[4]); from service.video.worker import worker_main; worker_main()"


def crashed() -> ServiceError:
    """The answer when the decoder (or its process) failed in a way the file is to blame for."""
    return ServiceError(
        ErrorKind.undecodable_video,
        "The video could not be decoded: the decoder failed on it. Check that the file plays, "
        "or re-encode it (for example H.264 in MP4).",
    )


def worker_main() -> None:
    """Entry point of a worker: ``python -c BOOT <fd> <parent pid> <memory MB> <root>``."""
    fd, parent_pid, memory_mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    import resource

    import av

    from service.video.decode import decode_file

    av.logging.set_level(None)
    conn = Connection(fd)
    cap = memory_mb * MiB
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard if hard != resource.RLIM_INFINITY and hard < cap else cap))
    conn.send_bytes(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        reply: dict[str, Any]
        frames = None
        try:
            spec = SamplingSpec(**message["spec"])
            limits = DecodeLimits(**message["limits"])
            result = decode_file(message["path"], spec, limits, int(message["threads"]), message["decoder"],
                                 int(message["gpu"]))  # fmt: skip
            frames = result.frames
            reply = {"ok": True, "shape": list(frames.shape), "facts": dataclasses.asdict(result.facts),
                     "windows": result.windows}  # fmt: skip
        except ServiceError as exc:
            reply = {"ok": False, **_error_fields(exc)}
        except MemoryError:
            reply = {"ok": False, **_error_fields(_memory_error())}
        except Exception:
            reply = {"ok": False, **_error_fields(crashed()), "detail": traceback.format_exc(limit=5)}
        try:
            conn.send_bytes(json.dumps(reply).encode())
            if frames is not None:
                conn.send_bytes(frames.reshape(-1).data)
        except (OSError, ValueError):
            return


def _error_fields(error: ServiceError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}


def _memory_error() -> ServiceError:
    return ServiceError(
        ErrorKind.undecodable_video,
        "Decoding the video needs more memory than the server allows. Send a smaller resolution or a shorter clip.",
    )


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this worker when the server dies, even mid-decode."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)
