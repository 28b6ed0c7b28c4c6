"""The gRPC server: ``tsm.v1.VideoClassifier``, the Open Inference Protocol, ``grpc.health.v1`` and
reflection on one grpc.aio server, behind the API-key interceptor and the unary-upload gate. Binding
a port is the runtime's.

Against floods: a connection must complete its handshake within ``header_timeout_s``, idle ones
close after 5 minutes, and past ``max_connections`` new ones are refused (gRPC's connection quota),
so slow or silent clients cannot hold the process's open files. A unary upload (``Classify``,
``ModelInfer``: the whole video in one message) is received only within ``grpc_unary_uploads`` at once;
beyond, it is refused before its message is read (RESOURCE_EXHAUSTED, naming ``ClassifyStream``,
which streams into the spool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from service.api.grpc import SERVICE_NAME, VideoClassifierServicer
from service.api.grpc_common import grpc_status
from service.api.oip_grpc import add_inference_service
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.api.wire import retry_after_header
from service.core.auth import ApiKeys
from service.core.config import MiB, Settings
from service.core.errors import ServiceError
from service.core.limits import connection_cap
from service.server import Server


@dataclass
class GrpcFrontDoor:
    """The grpc.aio server with its health servicer. Health says NOT_SERVING until ``set_serving``."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # warming up
        await self.server.start()

    async def set_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """NOT_SERVING for good: load balancers stop sending; calls still arriving get UNAVAILABLE."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)

    async def _set_health(self, status: Any) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


IDLE_CONNECTION_MS = 300_000  # a connection with no call for 5 minutes is closed (clients reconnect)


def max_message_bytes(settings: Settings) -> int:
    """Large enough for a whole upload plus the message framing, never gRPC's 4 MiB default."""
    return settings.grpc_max_message_bytes or settings.max_upload_bytes + MiB


class _ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses RPCs without an accepted key (metadata ``authorization: Bearer <key>`` or ``x-api-key``),
    before the handler reads a byte; health and reflection stay open when probes are public."""

    def __init__(self, keys: ApiKeys, public_probes: bool):
        self._keys = keys
        self._public = ("/grpc.health.v1.Health/", "/grpc.reflection.") if public_probes else ()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # fmt: skip
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._public):
            return handler
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        try:
            self._keys.check(metadata.get("authorization"), metadata.get("x-api-key"))
        except ServiceError as e:
            return _refusing_handler(handler, e)
        return handler


def _refusing_handler(handler: grpc.RpcMethodHandler, error: ServiceError) -> grpc.RpcMethodHandler:
    """A handler that only answers ``error``, without reading the request: it takes the request as a
    stream it never reads, so a refused upload is never received into memory."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata: tuple[tuple[str, str], ...] = (("tsm-error-code", error.code),)
        if error.retry_after_s is not None:
            metadata += (("retry-after-s", retry_after_header(error.retry_after_s)),)
        await context.abort(grpc_status(error.kind), error.message, trailing_metadata=metadata)

    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}  # fmt: skip
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    return grpc.stream_unary_rpc_method_handler(refuse, **serializers)


UNARY_UPLOADS = ("/tsm.v1.VideoClassifier/Classify", "/inference.GRPCInferenceService/ModelInfer")
SMALL_UPLOAD = 8 * 1024 * 1024  # a message under this gives its slot back once read


class _UnaryUploadGate(grpc.aio.ServerInterceptor):
    """At most ``slots`` large unary uploads (over :data:`SMALL_UPLOAD`) received or served at once:
    each such message is held in memory about four times over (gRPC's buffers, the protobuf message,
    its bytes). A call is served as a one-message stream so that its message is read only once it has
    a slot; it waits up to ``wait_s`` for one, then is refused unread (RESOURCE_EXHAUSTED naming
    ClassifyStream). A small message gives its slot back as soon as it is read."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots, self.wait_s = slots, wait_s
        self._free = asyncio.Semaphore(slots)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # fmt: skip
        handler = await continuation(details)
        if handler is None or details.method not in UNARY_UPLOADS or handler.request_streaming:
            return handler
        serve, free = handler.unary_unary, self._free

        async def gated(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            if not await self._slot():
                refused = (("tsm-error-code", "overloaded"), ("retry-after-s", "1"))
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal(), trailing_metadata=refused)
            held = True
            try:
                request = await anext(aiter(requests))
                if request.ByteSize() < SMALL_UPLOAD:
                    free.release()
                    held = False
                return await serve(request, context)
            finally:
                if held:
                    free.release()

        return grpc.stream_unary_rpc_method_handler(gated, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)  # fmt: skip

    async def _slot(self) -> bool:
        """A slot within ``wait_s``; with 0, one now or none."""
        if self.wait_s <= 0 and self._free.locked():
            return False
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_s or None)
        except (TimeoutError, asyncio.TimeoutError):  # Python 3.10: not yet the builtin
            return False
        return True

    def _refusal(self) -> str:
        return (f"{self.slots} large whole-video upload(s) are being received already (TSM_GRPC_UNARY_UPLOADS); "
                "stream the video with ClassifyStream, which takes any number at once, or retry shortly")  # fmt: skip


def build_grpc_server(server: Server) -> GrpcFrontDoor:
    """The server with every servicer registered; binds no port (``serve()`` does)."""
    settings = server.settings
    limit = max_message_bytes(settings)
    keys = server.api_keys
    interceptors: list[grpc.aio.ServerInterceptor] = [
        _UnaryUploadGate(settings.grpc_unary_uploads, settings.grpc_unary_wait_s)
    ]
    if keys.enabled:
        interceptors.insert(0, _ApiKeyInterceptor(keys, settings.auth_public_probes))
    rpc = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a port already in use must fail the start, not be shared
            ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
            ("grpc.max_allowed_incoming_connections", connection_cap(settings.max_connections)),
            ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        ],
    )
    pb_grpc.add_VideoClassifierServicer_to_server(VideoClassifierServicer(server), rpc)
    inference = add_inference_service(server, rpc)  # the Open Inference Protocol (service.api.oip_grpc)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, rpc)
    reflection.enable_server_reflection(
        [SERVICE_NAME, inference, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        rpc,
    )
    return GrpcFrontDoor(rpc, health)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files in Settings; None: plaintext (HTTP/2 prior knowledge)."""
    cert, key = settings.grpc_tls_cert_file, settings.grpc_tls_key_file
    if cert is None or key is None:  # Settings accept both or neither
        return None
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
