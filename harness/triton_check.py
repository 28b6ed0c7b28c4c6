"""Drive a running tsm-serve with the real ``tritonclient`` (HTTP and gRPC), as a Triton user would.

    .venv-triton/bin/python harness/triton_check.py --http 127.0.0.1:8000 --grpc 127.0.0.1:50051 \\
        --model tiny VIDEO...

Runs in its own virtual environment (``make triton-client``): tritonclient pins protobuf below the
version our own stubs need, so the two cannot share one. Prints one JSON object: per protocol, the
server's liveness and readiness, the model's metadata, and for the videos the probabilities
(``PROBABILITIES``, binary and JSON) and the classification extension's top 3; the extensions each
protocol advertises, the statistics extension, compressed requests and answers, a request id echoed as
sent and the ``timeout`` parameter (``protocol_gaps``); with ``--manage``, the repository extension's
index, unload and load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def run(client: Any, module: Any, model: str, videos: list[bytes], binary: bool) -> dict[str, Any]:
    data = np.array(videos, dtype=np.object_)
    video = module.InferInput("VIDEO", [len(videos)], "BYTES")
    kwargs = {"binary_data": True} if module is httpclient else {}
    video.set_data_from_numpy(data, **kwargs)
    out_kwargs = {"binary_data": binary} if module is httpclient else {}
    probs = client.infer(model, [video], outputs=[module.InferRequestedOutput("PROBABILITIES", **out_kwargs)])
    top = client.infer(model, [video], outputs=[module.InferRequestedOutput("PROBABILITIES", class_count=3,
                                                                            **out_kwargs)])  # fmt: skip
    one = module.InferInput("VIDEO", [1], "BYTES")
    one.set_data_from_numpy(data[:1], **kwargs)
    single = client.infer(model, [one]).as_numpy("PROBABILITIES").tolist()
    broken = module.InferInput("VIDEO", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not a video" * 100], dtype=np.object_), **kwargs)
    try:
        client.infer(model, [broken])
        error = None
    except InferenceServerException as e:  # the server's error, through the client's own exception
        error = {"status": str(e.status()), "message": e.message()}
    meta = client.get_model_metadata(model)
    if module is grpcclient:
        inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]
        meta = {"name": meta.name, "versions": list(meta.versions), "inputs": inputs}
    return {
        "live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready(model),
        "metadata": {"name": meta["name"], "versions": meta["versions"], "inputs": meta["inputs"]},
        "probabilities": probs.as_numpy("PROBABILITIES").tolist(),
        "single": single,
        "bad_video_error": error,
        "top3": [[s.decode() if isinstance(s, bytes) else s for s in row] for row in top.as_numpy("PROBABILITIES")],
    }  # fmt: skip


def protocol_gaps(http: Any, grpc: Any, model: str, video: bytes) -> dict[str, Any]:
    """What the Open Inference Protocol conformance run found missing, through tritonclient's own calls."""

    def inputs(module: Any) -> list[Any]:
        tensor = module.InferInput("VIDEO", [1], "BYTES")
        data = np.array([video], dtype=np.object_)
        tensor.set_data_from_numpy(data, **({"binary_data": True} if module is httpclient else {}))
        return [tensor]

    plain = http.infer(model, inputs(httpclient)).as_numpy("PROBABILITIES").tolist()
    compressed = {}
    for request_coding, answer_coding in (("gzip", "gzip"), ("deflate", "deflate"), ("gzip", None), (None, "gzip")):
        result = http.infer(model, inputs(httpclient), request_compression_algorithm=request_coding,
                            response_compression_algorithm=answer_coding)  # fmt: skip
        compressed[f"{request_coding}/{answer_coding}"] = result.as_numpy("PROBABILITIES").tolist()
    grpc_compressed = grpc.infer(model, inputs(grpcclient), compression_algorithm="gzip")
    odd_id = "client id / with spaces, slashes & a #hash"
    try:
        http.infer(model, inputs(httpclient), timeout=1)  # microseconds: past before the video decodes
        timeout_error = None
    except InferenceServerException as e:
        timeout_error = {"status": str(e.status()), "message": e.message()}
    return {
        "extensions": {"http": http.get_server_metadata()["extensions"],
                       "grpc": list(grpc.get_server_metadata().extensions)},
        "plain": plain,
        "compressed": {**compressed, "grpc/gzip": grpc_compressed.as_numpy("PROBABILITIES").tolist()},
        "ids": {"http": http.infer(model, inputs(httpclient), request_id=odd_id).get_response()["id"],
                "grpc": grpc.infer(model, inputs(grpcclient), request_id=odd_id).get_response().id,
                "sent": odd_id},
        "timeout_error": timeout_error,
        "stats": {"http": http.get_inference_statistics(model),
                  "grpc": grpc.get_inference_statistics(model, as_json=True),
                  "http_all": http.get_inference_statistics()},
    }  # fmt: skip


def manage(client: Any, model: str) -> dict[str, Any]:
    """Triton's model repository extension (HTTP): unload ``model``, then load it again."""
    listed = client.get_model_repository_index()
    client.unload_model(model)
    unloaded_ready = client.is_model_ready(model)
    index_after_unload = client.get_model_repository_index()
    client.load_model(model)
    return {
        "index": listed, "unloaded_ready": unloaded_ready, "index_after_unload": index_after_unload,
        "reloaded_ready": client.is_model_ready(model),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--http", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--manage", metavar="MODEL", help="also unload and load MODEL through the repository extension")
    p.add_argument("videos", nargs="+", type=Path)
    args = p.parse_args()
    videos = [v.read_bytes() for v in args.videos]
    out = {
        "http_binary": run(httpclient.InferenceServerClient(args.http), httpclient, args.model, videos, True),
        "http_json": run(httpclient.InferenceServerClient(args.http), httpclient, args.model, videos, False),
        "grpc": run(grpcclient.InferenceServerClient(args.grpc), grpcclient, args.model, videos, True),
    }
    http, grpc = httpclient.InferenceServerClient(args.http), grpcclient.InferenceServerClient(args.grpc)
    out["protocol_gaps"] = protocol_gaps(http, grpc, args.model, videos[0])
    if args.manage:
        out["repository"] = manage(httpclient.InferenceServerClient(args.http), args.manage)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
