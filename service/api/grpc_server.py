"""The gRPC server: ``tsm.v1.VideoClassifier``, the Open Inference Protocol, ``grpc.health.v1`` and
reflection on one grpc.aio server, behind the API-key interceptor. Binding a port is the runtime's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from service.core.auth import ApiKeys
from service.core.config import MiB, Settings
from service.core.errors import ServiceError
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
    """A handler of the same shape as ``handler`` that only answers ``error``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc_status(error.kind), error.message, trailing_metadata=(("tsm-error-code", error.code),))

    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}  # fmt: skip
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)


def build_grpc_server(server: Server) -> GrpcFrontDoor:
    """The server with every servicer registered; binds no port (``serve()`` does)."""
    settings = server.settings
    limit = max_message_bytes(settings)
    keys = server.api_keys
    rpc = grpc.aio.server(
        interceptors=[_ApiKeyInterceptor(keys, settings.auth_public_probes)] if keys.enabled else None,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a port already in use must fail the start, not be shared
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
