"""Every live stream of the server: admission and limits, the choice of model, and the read loop both
front doors (gRPC ``ClassifyLive``, the WebSocket) share."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator

from service.core.errors import ErrorKind, ServiceError, shutting_down
from service.core.metrics import Metrics
from service.live.hub import LiveLimits, LiveOptions, LiveResult, LiveStream, ModelHub
from service.video.frames import Frame

log = logging.getLogger("tsm.live")


class LiveService:
    """Every live stream of the server: admission, limits, the read loop both front doors share."""

    def __init__(self, hubs: dict[str, ModelHub], default_model: str | None, limits: LiveLimits, metrics: Metrics):
        self.hubs, self.default_model, self.limits, self.metrics = hubs, default_model, limits, metrics
        # Hubs of versions replaced or unloaded (service.management.repository): their open streams go on.
        self.retiring: set[ModelHub] = set()
        self.accepting = True
        self._ids = itertools.count(1)

    @property
    def active(self) -> int:
        return sum(len(h.streams) for h in self._all_hubs())

    def _all_hubs(self) -> list[ModelHub]:
        return [*self.hubs.values(), *self.retiring]

    async def stop(self) -> None:
        for hub in self._all_hubs():
            await hub.stop()

    def admit(self) -> None:
        """Refuses a new stream while draining or at the limit: before a WebSocket is upgraded."""
        if not self.accepting:
            raise shutting_down()
        if self.active >= self.limits.max_streams:
            raise ServiceError(
                ErrorKind.overloaded,
                f"this server carries its limit of {self.limits.max_streams} live streams; retry later or "
                "on another replica",
                retry_after_s=1.0,
            )

    def resolve(self, name: str | None) -> ModelHub:
        if not name:
            if self.default_model is None:
                raise ServiceError(
                    ErrorKind.unknown_model,
                    "this server has no online model loaded: import one (tsm-serve import-checkpoint --online) or "
                    "train one (python -m training.train --online)",
                )
            name = self.default_model
        hub = self.hubs.get(name)
        if hub is None:
            online = ", ".join(sorted(self.hubs)) or "none"
            raise ServiceError(
                ErrorKind.unknown_model,
                f"{name!r} is not an online model loaded here (live streams need one); online models: {online}",
            )
        return hub

    def open(self, options: LiveOptions) -> LiveStream:
        self.admit()
        hub = self.resolve(options.model)
        c = hub.config
        checks = [
            (options.top_k, 1, c.num_classes, "top_k"),
            (options.smoothing_frames, 1, 300, "smoothing_frames"),
            (options.frame_stride, 1, 300, "frame_stride"),
        ]
        for value, low, high, name in checks:
            if value is not None and not low <= value <= high:
                raise ServiceError(ErrorKind.bad_request, f"{name} must be between {low} and {high}, got {value}")
        stream = LiveStream(
            id=next(self._ids), hub=hub, top_k=options.top_k, smoothing=options.smoothing_frames or c.smoothing,
            stride=options.frame_stride or c.frame_stride,
        )  # fmt: skip
        hub.streams[stream.id] = stream
        self.metrics.live_streams.labels(hub.name).inc()
        return stream

    def close(self, stream: LiveStream) -> None:
        """Frees the stream's state; its pending frame, if any, is dropped. Idempotent."""
        hub = stream.hub
        if hub.streams.pop(stream.id, None) is None:
            return
        self.metrics.live_streams.labels(hub.name).dec()
        log.info(
            "live stream %d on %s ended (%s): %d frames received, %d processed, %d dropped, %.1f s",
            stream.id, hub.name, stream.end_reason, stream.received, stream.processed, stream.dropped,
            time.monotonic() - stream.started,
        )  # fmt: skip

    def drain(self) -> None:
        """Refuse new streams; every open one gets a final ``draining`` answer and ends."""
        self.accepting = False
        for hub in self._all_hubs():
            for stream in list(hub.streams.values()):
                stream.end(shutting_down())

    async def answers(self, stream: LiveStream, frames: AsyncIterator[Frame]) -> AsyncIterator[LiveResult]:
        """The stream's answers while ``frames`` are read, checked and decoded alongside; ends when
        the client ends its frames (after the last pending one is answered), or raises the
        ``ServiceError`` that ended it (a bad frame, a limit, draining)."""
        reader = asyncio.create_task(self._read(stream, frames))
        try:
            while True:
                item = await stream.outbox.get()
                stream.hub.wake()  # an answer was read: the stream may be stepped again
                if item is None:
                    return
                if isinstance(item, ServiceError):
                    raise item
                yield item
        finally:
            # The flag as well as the cancel: asyncio.wait_for (Python 3.10, 3.11) swallows a cancel that
            # lands as a frame arrives, and the reader would go on reading a client that keeps sending
            # (seen: a drained stream held open until the server's stop cancelled it).
            stream.answered = True
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.close(stream)

    async def _read(self, stream: LiveStream, frames: AsyncIterator[Frame]) -> None:
        hub, limits = stream.hub, self.limits
        try:
            while True:
                if stream.answered:
                    return  # cancelled, though the cancel was swallowed (see answers)
                left = limits.max_duration_s - (time.monotonic() - stream.started)
                if left <= 0:
                    raise ServiceError(
                        ErrorKind.stream_timeout,
                        f"the stream reached the longest a live stream may last ({limits.max_duration_s:g} s); "
                        "open a new one to go on",
                    )
                try:
                    frame = await asyncio.wait_for(anext(frames, None), min(limits.idle_timeout_s, left))
                except TimeoutError:
                    if time.monotonic() - stream.started >= limits.max_duration_s:
                        continue  # the loop says which limit
                    raise ServiceError(
                        ErrorKind.stream_timeout,
                        f"no frame for {limits.idle_timeout_s:g} s: the idle stream was closed",
                    ) from None
                if frame is None:
                    break
                arrived = time.monotonic()
                index = stream.received
                stream.received += 1
                if index % stream.stride:
                    continue
                size = hub.preprocess.check(frame)  # refuses a bad frame at once, before any decoding
                pixels = await asyncio.to_thread(hub.preprocess, frame, size)
                hub.submit(stream, pixels, index, frame.pts_us, arrived)
        except ServiceError as e:
            stream.end(e)
            return
        except Exception:  # never leave the stream waiting on a reader that died
            log.exception("live stream %d: reading frames failed", stream.id)
            stream.end(ServiceError(ErrorKind.internal, "internal error while reading a frame; the stream ended"))
            return
        stream.input_done = True
        if stream.pending is None and not stream.in_flight:
            stream.end()
