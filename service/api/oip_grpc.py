"""``inference.GRPCInferenceService``, the Open Inference Protocol over gRPC, on the gRPC port beside
``tsm.v1.VideoClassifier`` (``tritonclient.grpc`` and KServe clients). The protocol is ``service.api.oip``.

``VIDEO`` comes in ``raw_input_contents`` (each element a 4-byte little-endian length, then the video
file) or in ``contents.bytes_contents``; the output goes back in ``raw_output_contents``, as Triton
answers. Errors carry the gRPC status of our error table and its message.
"""

from __future__ import annotations

from typing import Any

import grpc

from service import __version__
from service.api import oip
from service.api.grpc_common import call_request_id, call_timeout, status_from_errors
from service.api.pb.inference import model_statistics_pb2 as stats_pb
from service.api.pb.inference import open_inference_grpc_pb2 as pb
from service.api.pb.inference import open_inference_grpc_pb2_grpc as pb_grpc
from service.api.wire import request_id
from service.server import Server

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _param(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _videos(request: pb.ModelInferRequest) -> list[bytes]:
    if len(request.inputs) != 1:
        raise oip.bad(f"the request needs exactly one input, {oip.INPUT} (BYTES, one encoded video per element)")
    tensor = request.inputs[0]
    if request.raw_input_contents and tensor.HasField("contents"):
        raise oip.bad(
            f"input {oip.INPUT} has both raw_input_contents and contents: the protocol allows one or the other"
        )
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise oip.bad("raw_input_contents must hold one entry per input")
        videos = oip.split_bytes(request.raw_input_contents[0], oip.INPUT)
    else:
        videos = list(tensor.contents.bytes_contents)
    oip.check_input(tensor.name, tensor.datatype, list(tensor.shape), len(videos))
    return videos


def _wanted(request: pb.ModelInferRequest) -> oip.OutputWanted:
    if len(request.outputs) > 1:
        raise oip.bad(f"request at most one output, {oip.OUTPUT}")
    if not request.outputs:
        return oip.OutputWanted()
    out = request.outputs[0]
    classification = out.parameters.get("classification")
    return oip.check_output(out.name, _param(classification) if classification is not None else None)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: Server):
        self._server = server

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._server.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=__version__, extensions=oip.GRPC_EXTENSIONS)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        async with status_from_errors(context, call_request_id(context), self._server.identify):
            oip.model_info(self._server, request.name, request.version)
        return pb.ModelReadyResponse(ready=self._server.ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async with status_from_errors(context, call_request_id(context), self._server.identify):
            info = oip.model_info(self._server, request.name, request.version)
            meta = oip.model_metadata(info, self._server.catalog.versions_of(info.name))
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensors(**t) for t in meta["inputs"]], outputs=[tensors(**t) for t in meta["outputs"]],
        )  # fmt: skip

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        rid = request_id(request.id) if request.id else call_request_id(context)
        async with status_from_errors(context, rid, self._server.identify):
            oip.model_info(self._server, request.model_name, request.model_version)
            params = {key: _param(value) for key, value in request.parameters.items()}
            key = oip.model_key(request.model_name, request.model_version)
            result = await oip.infer(self._server, "v2-grpc", key, _videos(request), params, _wanted(request), rid,
                                     call_timeout(context))  # fmt: skip
        output = pb.ModelInferResponse.InferOutputTensor(
            name=oip.OUTPUT, datatype=result.output_datatype, shape=result.output_shape
        )
        # The request's id is data, echoed as sent; our request id (logs, metadata) keeps its own rule.
        return pb.ModelInferResponse(model_name=result.model, model_version=result.version, id=request.id or rid,
                                     outputs=[output], raw_output_contents=[result.output_bytes()])  # fmt: skip

    async def ModelStatistics(
        self, request: stats_pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> stats_pb.ModelStatisticsResponse:
        """The statistics extension (Triton's RPC, beside the protocol's own; see model_statistics.proto)."""
        async with status_from_errors(context, call_request_id(context), self._server.identify):
            entries = oip.statistics(self._server, request.name or None, request.version or None)
        return stats_pb.ModelStatisticsResponse(model_stats=[stats_pb.ModelStatistics(**e) for e in entries])


def add_inference_service(server: Server, rpc: grpc.aio.Server) -> str:
    """Registers the servicer, and the statistics RPC under the same service name; returns the
    service's full name (for reflection)."""
    servicer = InferenceServicer(server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, rpc)
    statistics = grpc.unary_unary_rpc_method_handler(
        servicer.ModelStatistics,
        request_deserializer=stats_pb.ModelStatisticsRequest.FromString,
        response_serializer=stats_pb.ModelStatisticsResponse.SerializeToString,
    )
    rpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"ModelStatistics": statistics}),))
    return SERVICE_NAME
