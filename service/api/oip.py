"""The Open Inference Protocol (KServe v2) for our classification models, free of any framework: what
the v2 REST routes (``service.api.oip_http``) and the ``inference.GRPCInferenceService`` servicer
(``service.api.oip_grpc``) share.

Every model exposes one input, ``VIDEO`` (``BYTES``, shape ``[-1]``: each element one whole encoded
video file) and one output, ``PROBABILITIES`` (``FP32``, ``[-1, classes]``: the mean of the views'
logits, then softmax, as ``/classify``). Request parameters carry ``top_k``, ``clips``, ``crops``,
``sampling`` and ``decoder``; the protocol's ``timeout`` (microseconds, Triton's unit) is the request's
deadline (the sooner of it and a gRPC deadline), ``priority`` is accepted (requests are served in
arrival order). With the classification extension (``"classification": k`` on the requested
output) the output is ``BYTES`` ``"score:index:label"`` strings instead, best first, ``[-1, k]``. The elements of
one request are classified concurrently through ``Classifier.run``, so their clips share batches with
each other and with every other request; the first failure fails the request, with its own error.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.classify.options import MAX_TIMEOUT_S, ClassifyOptions
from service.classify.result import Classification
from service.core import fair
from service.core.errors import ErrorKind, ServiceError
from service.management.catalog import ModelInfo
from service.server import Server

INPUT, OUTPUT = "VIDEO", "PROBABILITIES"
# What each front door serves of the protocol's extensions (exactly: clients check before they call).
HTTP_EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "model_configuration", "statistics"]
GRPC_EXTENSIONS = ["classification", "statistics"]
SERVER_NAME = "tsm-serve"
PLATFORM = "pytorch_tsm"
_DEFAULTS = ClassifyOptions()
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "top_k": (int,),
    "clips": (int,),
    "crops": (int,),
    "sampling": (str,),
    "decoder": (str,),
    "timeout": (int,),
    "priority": (int,),
}


def bad(message: str) -> ServiceError:
    return ServiceError(ErrorKind.bad_request, message)


@dataclass(frozen=True)
class OutputWanted:
    """The requested output: plain probabilities, or the classification extension's top k."""

    classification: int | None = None


@dataclass
class InferResult:
    model: str
    version: str
    request_id: str
    probabilities: np.ndarray  # [N, classes] float32
    labels: list[str]
    classification: int | None  # k of the classification extension, or None

    def classification_strings(self) -> list[list[bytes]]:
        """Per element, ``"score:index:label"`` of the k best, best first (Triton's format)."""
        assert self.classification is not None
        out = []
        for row in self.probabilities:
            best = np.argsort(-row, kind="stable")[: self.classification]
            out.append([f"{row[i]:.6f}:{i}:{self.labels[i]}".encode() for i in best])
        return out

    @property
    def output_shape(self) -> list[int]:
        n = len(self.probabilities)
        return [n, self.classification] if self.classification is not None else [n, self.probabilities.shape[1]]

    @property
    def output_datatype(self) -> str:
        return "BYTES" if self.classification is not None else "FP32"

    def output_bytes(self) -> bytes:
        """The output as the binary tensor data extension (and gRPC raw contents) carry it."""
        if self.classification is None:
            return self.probabilities.astype("<f4").tobytes()
        return join_bytes([s for row in self.classification_strings() for s in row])


def split_bytes(raw: bytes, what: str) -> list[bytes]:
    """A BYTES tensor's raw contents: each element a 4-byte little-endian length, then its bytes."""
    items, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise bad(f"{what}: a BYTES element must start with its 4-byte little-endian length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise bad(f"{what}: a BYTES element says {n} bytes but fewer follow")
        items.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return items


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def check_input(name: str, datatype: str, shape: list[int], count: int) -> None:
    if name != INPUT:
        raise bad(f"unknown input {name!r}: the only input is {INPUT!r} (BYTES, one encoded video per element)")
    if datatype != "BYTES":
        raise bad(f"input {INPUT} has datatype BYTES (each element one whole video file), not {datatype}")
    if len(shape) != 1 or shape[0] != count:
        raise bad(f"input {INPUT} has shape [N] with N the number of videos; got {shape} for {count} element(s)")
    if count == 0:
        raise ServiceError(ErrorKind.empty_upload, f"input {INPUT} has no video in it")


def check_output(name: str, classification: Any) -> OutputWanted:
    if name != OUTPUT:
        raise bad(f"unknown output {name!r}: the only output is {OUTPUT!r}")
    if classification is None:
        return OutputWanted()
    if isinstance(classification, bool) or not isinstance(classification, int) or classification < 1:
        raise bad("the classification parameter of an output is the number of classes to return (k ≥ 1)")
    return OutputWanted(classification)


def options(model: str, params: dict[str, Any]) -> ClassifyOptions:
    """Request parameters → our options (unknown parameters are ignored, as v2 servers do)."""
    for key, kinds in _OPTION_TYPES.items():
        if key in params and (isinstance(params[key], bool) or not isinstance(params[key], kinds)):
            raise bad(f"parameter {key} must be {'a string' if kinds == (str,) else 'an integer'}")
    sampling = params.get("sampling", _DEFAULTS.sampling)
    if sampling not in ("uniform", "keyframes"):
        raise bad("parameter sampling must be 'uniform' or 'keyframes'")
    return ClassifyOptions(model=model, top_k=int(params.get("top_k", _DEFAULTS.top_k)),
                           clips=int(params.get("clips", _DEFAULTS.clips)),
                           crops=int(params.get("crops", _DEFAULTS.crops)), sampling=sampling,
                           decoder=params.get("decoder"))  # fmt: skip


def _timeout_param(params: dict[str, Any]) -> float | None:
    """The v2 ``timeout`` parameter (microseconds) in seconds; None when absent."""
    if "timeout" not in params:
        return None
    micros = params["timeout"]
    if micros <= 0 or micros > MAX_TIMEOUT_S * 1e6:
        raise bad(f"parameter timeout is in microseconds: between 1 and {int(MAX_TIMEOUT_S * 1e6)}")
    return float(micros) / 1e6


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def model_key(name: str, version: str | None) -> str:
    """How the classifier names a model: its newest served version, or NAME:VERSION."""
    return f"{name}:{version}" if version else name


def model_info(server: Server, name: str, version: str | None) -> ModelInfo:
    """The served model, or the served version asked for."""
    try:
        return server.catalog.model_info(model_key(name, version))
    except ServiceError:
        served = server.catalog.versions_of(name)
        if not version or not served:
            raise
        raise ServiceError(
            ErrorKind.unknown_model, f"model {name!r} has no version {version!r} served (served: {', '.join(served)})"
        ) from None


def model_metadata(info: ModelInfo, versions: list[str]) -> dict[str, Any]:
    return {
        "name": info.name, "versions": versions, "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, info.num_classes]}],
    }  # fmt: skip


def statistics(server: Server, name: str | None, version: str | None) -> list[dict[str, Any]]:
    """The statistics extension's ``model_stats``: every served version, or those of ``name`` (its
    ``version``). An unknown model or version is ``unknown_model``."""
    served = [(info.name, info.version) for info in server.catalog.models_info()]
    if name:
        model_info(server, name, version)  # the error naming what is served
        served = [(n, v) for n, v in served if n == name and (not version or v == version)]
    return server.metrics.statistics.snapshot(served)


def model_config(info: ModelInfo, versions: list[str]) -> dict[str, Any]:
    """Triton's model configuration, as much as clients such as perf_analyzer read: no batch
    dimension of Triton's own (``max_batch_size`` 0), the request's videos are the first dimension."""
    return {
        "name": info.name, "platform": PLATFORM, "backend": "tsm-serve", "max_batch_size": 0,
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [-1, info.num_classes]}],
        "version_policy": {"specific": {"versions": [int(v) for v in versions if v.isdigit()]}},
    }  # fmt: skip


async def infer(
    server: Server, protocol: str, key: str, videos: list[bytes], params: dict[str, Any],
    wanted: OutputWanted, request_id: str, timeout_s: float | None,
) -> InferResult:  # fmt: skip
    """Classify every video of the request concurrently (their clips share batches). ``key``: the
    model as ``model_key`` names it."""
    classifier = server.require_classifier()
    info = server.catalog.model_info(key)
    opts = options(key, params)
    timeout_s = _sooner(timeout_s, _timeout_param(params))
    if fair.priority_of(str(params.get("priority", ""))) == "bulk":  # Triton's: 1 the highest, 0 the default
        fair.current.set(fair.Client(fair.current.get().name, "bulk"))
    opts.check(info.num_classes, classifier.limits.max_clips)
    if wanted.classification is not None and wanted.classification > info.num_classes:
        raise bad(f"classification k must be at most {info.num_classes} (the model's classes)")

    async def one(i: int, video: bytes) -> Classification:
        async def body() -> Any:
            yield video

        rid = request_id if len(videos) == 1 else f"{request_id}.{i}"
        return await classifier.run(protocol, opts, body(), rid, timeout_s)

    tasks = [asyncio.ensure_future(one(i, v)) for i, v in enumerate(videos)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:  # the first failure, in element order, is the answer
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        results = [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    probabilities = np.stack([r.probabilities for r in results]).astype(np.float32)
    labels = classifier.models[key].entry.labels
    return InferResult(info.name, info.version, request_id, probabilities, labels, wanted.classification)
