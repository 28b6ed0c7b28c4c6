"""The pool of decode worker processes (the worker's own loop is ``service.video.worker``): one
job at a time each, killed and replaced when they crash, hang or exceed their memory cap, recycled
after ``max_jobs`` (a bound on whatever a native decoder leaks).

Shape: a queue of jobs served per client in weighted turns (``service.core.fair``: one client's
backlog never sits in front of another client's next upload); one slot task per worker takes a job,
sends it down the worker's socket and waits for the answer in a thread (so the event loop never
blocks on a pipe), with the decode timeout. Workers are fresh interpreters (``python -c``), not
multiprocessing children: spawn and forkserver re-import the parent's ``__main__``, which in the
server imports torch.

The wire protocol is JSON plus raw frame bytes in both directions; the parent never unpickles
anything a worker (which parses hostile files) sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

import service
from service.core.errors import ErrorKind, ServiceError, shutting_down
from service.core.fair import FairQueue, current
from service.video.decode import DECODER_THREADS
from service.video.decoded import DecodedVideo, VideoFacts
from service.video.decoders import Decoder
from service.video.probe import DecodeLimits
from service.video.sampling import SamplingSpec
from service.video.worker import BOOT, crashed

log = logging.getLogger("tsm.decode")

_READY_TIMEOUT_S = 60.0
_ROOT = str(Path(service.__file__).resolve().parent.parent)  # the folder (or zip) that holds the package
_WORKER_ENV = {
    # Small, predictable memory under the worker's RLIMIT_DATA cap: no 64 MB malloc arena per thread, no
    # BLAS thread pools.
    "MALLOC_ARENA_MAX": "2",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def _timed_out(timeout_s: float) -> ServiceError:
    return ServiceError(
        ErrorKind.decode_timeout,
        f"Decoding the video took longer than {timeout_s:g} s. Send a shorter or smaller clip, "
        "or one with more keyframes.",
    )


def _deadline_passed() -> ServiceError:
    return ServiceError(ErrorKind.deadline_exceeded, "the request deadline passed while the video was decoding")


@dataclass
class _Job:
    path: Path
    spec: SamplingSpec
    timeout_s: float
    deadline_first: bool  # the caller's time runs out before the decode limit: its error, not ours
    decoder: Decoder
    future: asyncio.Future[DecodedVideo]
    flow: str = ""  # its client and priority class


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection
    jobs: int = 0


@dataclass
class _Slot:
    worker: _Worker | None = None
    busy: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class DecodePool:
    """``workers`` decode processes behind one asyncio queue."""

    def __init__(
        self,
        limits: DecodeLimits,
        workers: int,
        decoder_threads: int = DECODER_THREADS,
        decoder: Decoder = "pyav",
        gpu: int = 0,
        weight_of: Callable[[str], float] | None = None,
    ) -> None:
        """``decoder_threads`` per worker: 1 suits one worker per core (see bench/decode.py). ``decoder``
        decodes the jobs that name none; ``nvdec`` decodes on CUDA device ``gpu``."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._limits = limits
        self._decoder_threads = decoder_threads
        self.decoder = decoder
        self._gpu = gpu
        self._slots = [_Slot() for _ in range(workers)]
        self._waiting: FairQueue[_Job] = FairQueue(weight_of)
        self._queue: asyncio.Queue[None] | None = None  # one token per queued job: slots wait on it
        # One thread per slot waits on that slot's socket.
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode-wait")
        self._restarts = 0
        self._jobs = 0
        self._closed = False

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        await asyncio.gather(*(self._replace(slot) for slot in self._slots))
        for slot in self._slots:
            slot.task = asyncio.create_task(self._serve(slot))

    async def decode(
        self, path: Path, spec: SamplingSpec, time_left_s: float | None = None, decoder: Decoder | None = None
    ) -> DecodedVideo:
        """Decodes in a worker (with ``decoder``, else the pool's), killed after the limits' ``timeout_s``
        (decode_timeout) or, when the caller's ``time_left_s`` ends first, then (deadline_exceeded).
        Cancelling the await drops a queued job or recycles its worker."""
        if self._queue is None or self._closed:
            raise ServiceError(ErrorKind.not_ready, "The decoder is not running; retry shortly.")
        future: asyncio.Future[DecodedVideo] = asyncio.get_running_loop().create_future()
        limit = self._limits.timeout_s
        time_left_s = limit if time_left_s is None else time_left_s
        flow = current.get().flow
        job = _Job(
            Path(path), spec, min(limit, time_left_s), time_left_s < limit, decoder or self.decoder, future, flow
        )
        self._waiting.push(flow, job)
        self._queue.put_nowait(None)
        return await future

    async def close(self) -> None:
        self._closed = True
        for slot in self._slots:
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*(s.task for s in self._slots if s.task is not None), return_exceptions=True)
        while self._waiting:
            _, job = self._waiting.pop()
            if not job.future.done():
                job.future.set_exception(shutting_down())
        await asyncio.gather(*(self._stop(slot) for slot in self._slots))
        self._threads.shutdown(wait=True)

    def stats(self) -> dict[str, int]:
        busy = sum(slot.busy for slot in self._slots)
        alive = sum(slot.worker is not None for slot in self._slots)
        return {
            "workers": alive,
            "busy": busy,
            "idle": alive - busy,
            "queued": len(self._waiting),
            "restarts": self._restarts,
            "jobs": self._jobs,
        }

    def worker_pids(self, busy_only: bool = False) -> list[int]:
        """Pids of the live workers (for tests and debugging)."""
        return [
            slot.worker.process.pid for slot in self._slots if slot.worker is not None and (slot.busy or not busy_only)
        ]

    # --- slots -------------------------------------------------------------------------------

    async def _serve(self, slot: _Slot) -> None:
        assert self._queue is not None
        while True:
            if slot.worker is None:
                try:
                    await self._replace(slot)
                except Exception:
                    log.exception("could not start a decode worker; retrying")
                    await asyncio.sleep(1.0)
                    continue
            await self._queue.get()
            _, job = self._waiting.pop()
            if job.future.done():  # cancelled while queued
                continue
            if slot.worker is None or slot.worker.process.poll() is not None:  # died while idle
                try:
                    await self._stop(slot, crashed=True)
                    await self._replace(slot)
                except Exception:
                    log.exception("could not start a decode worker")
                    job.future.set_exception(crashed())
                    continue
            slot.busy = True
            try:
                result: DecodedVideo | ServiceError = await self._run(slot, job)
            except asyncio.CancelledError:
                if not job.future.done():
                    job.future.set_exception(shutting_down())
                raise
            except Exception:  # a bug of ours: the request fails, the pool goes on
                log.exception("decode pool error")
                await self._stop(slot)
                result = crashed()
            finally:
                slot.busy = False
            self._jobs += 1
            if not job.future.done():
                if isinstance(result, ServiceError):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            if slot.worker is not None and slot.worker.jobs >= self._limits.max_jobs:
                await self._stop(slot)  # recycled; replaced at the top of the loop

    async def _run(self, slot: _Slot, job: _Job) -> DecodedVideo | ServiceError:
        worker = slot.worker
        assert worker is not None
        worker.jobs += 1
        message = {
            "path": str(job.path),
            "spec": dataclasses.asdict(job.spec),
            "limits": dataclasses.asdict(self._limits),
            "threads": self._decoder_threads,
            "decoder": job.decoder,
            "gpu": self._gpu,
        }
        try:
            worker.conn.send_bytes(json.dumps(message).encode())
        except OSError:
            await self._stop(slot, crashed=True)
            return crashed()
        loop = asyncio.get_running_loop()
        reply = loop.run_in_executor(self._threads, _receive, worker.conn)
        waiters: set[asyncio.Future[Any]] = {reply, job.future}
        try:
            done, _ = await asyncio.wait(waiters, timeout=job.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # close() while decoding
            await asyncio.shield(self._stop(slot, crashed=True, pending=reply))
            raise
        if reply not in done:
            # Timed out, or the caller went away: kill the worker; its socket then reads EOF,
            # which ends the waiting thread.
            await self._stop(slot, crashed=True, pending=reply)
            return _deadline_passed() if job.deadline_first else _timed_out(job.timeout_s)
        try:
            answer = reply.result()
        except (EOFError, OSError, ValueError):
            log.warning("decode worker %d died (exit %s)", worker.process.pid, worker.process.poll())
            await self._stop(slot, crashed=True)
            return crashed()
        return _parse(answer, job.spec)

    async def _replace(self, slot: _Slot) -> None:
        if slot.worker is not None:
            await self._stop(slot)
        parent, child = socket.socketpair()
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    BOOT,
                    str(child.fileno()),
                    str(os.getpid()),
                    str(self._limits.memory_mb),
                    _ROOT,
                ],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # ffmpeg logs server paths; our replies carry what matters
                start_new_session=True,  # a Ctrl-C to the server's terminal is the server's to handle
                env={**os.environ, **_WORKER_ENV},
            )
        finally:
            child.close()
        conn = Connection(parent.detach())
        loop = asyncio.get_running_loop()
        ready = loop.run_in_executor(self._threads, conn.recv_bytes)
        try:
            done, _ = await asyncio.wait({ready}, timeout=_READY_TIMEOUT_S)
            if not done or ready.exception() is not None:
                raise RuntimeError("decode worker did not start")
        except BaseException:  # also cancellation (close() during a restart): leave no orphan
            process.kill()
            with contextlib.suppress(BaseException):
                await asyncio.shield(ready)
            conn.close()
            await loop.run_in_executor(None, process.wait)
            raise
        slot.worker = _Worker(process, conn)

    async def _stop(self, slot: _Slot, crashed: bool = False, pending: asyncio.Future[Any] | None = None) -> None:
        """Ends the slot's worker: a healthy one exits on EOF, a crashed or hung one is killed.
        The socket is closed only after ``pending`` (a thread reading it) has finished, so the
        thread never reads a reused descriptor."""
        worker, slot.worker = slot.worker, None
        if worker is None:
            return
        loop = asyncio.get_running_loop()
        if crashed:
            self._restarts += 1
            worker.process.kill()
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
            worker.conn.close()
        else:
            worker.conn.close()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, worker.process.wait), 5.0)
                return
            except TimeoutError:
                worker.process.kill()
        await loop.run_in_executor(None, worker.process.wait)


def _receive(conn: Connection) -> tuple[dict[str, Any], np.ndarray | None]:
    header = json.loads(conn.recv_bytes())
    if not header.get("ok"):
        return header, None
    shape = tuple(int(n) for n in header["shape"])
    frames = np.empty(shape, np.uint8)
    if conn.recv_bytes_into(frames.reshape(-1)) != frames.nbytes:
        raise ValueError("short frame message")
    return header, frames


def _parse(answer: tuple[dict[str, Any], np.ndarray | None], spec: SamplingSpec) -> DecodedVideo | ServiceError:
    header, frames = answer
    if frames is None:
        if header.get("detail"):
            log.warning("decode worker error: %s", header["detail"])
        try:
            return ServiceError(ErrorKind[header["code"]], str(header["message"]))
        except (KeyError, TypeError):
            return crashed()
    windows = [(float(a), float(b)) for a, b in header.get("windows", [])]
    views = len(windows) * spec.crops if spec.timeline else spec.views
    if frames.shape != (views, spec.num_segments, spec.input_size, spec.input_size, 3):
        return crashed()
    return DecodedVideo(frames, VideoFacts(**header["facts"]), windows)
