"""The Open Inference Protocol (KServe v2): REST on the HTTP port, inference.GRPCInferenceService on the
gRPC port, against the real server in this process. Answers equal /classify's for the same videos."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from harness.inproc import InProcessServer
from service.api import oip
from service.api.pb.inference import open_inference_grpc_pb2 as pb
from service.api.pb.inference import open_inference_grpc_pb2_grpc as pb_grpc
from tests.support import ROOT, SAMPLE_VIDEOS, TINY_LABELS, UPLOAD_LIMIT

Infer = pb.ModelInferRequest


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def v2_body(videos: list[bytes], outputs: list[dict[str, Any]] | None = None, **params: Any) -> tuple[bytes, str]:
    """A binary-extension request: the JSON header, then VIDEO's raw bytes."""
    raw = bytes_tensor(videos)
    head: dict[str, Any] = {"inputs": [{"name": "VIDEO", "datatype": "BYTES", "shape": [len(videos)],
                                        "parameters": {"binary_data_size": len(raw)}}]}  # fmt: skip
    if outputs is not None:
        head["outputs"] = outputs
    if params:
        head["parameters"] = params
    header = json.dumps(head).encode()
    return header + raw, str(len(header))


def post_infer(
    server: InProcessServer, body: bytes, header_length: str, path: str = "/v2/models/tiny/infer"
) -> httpx.Response:
    return server.http.post(path, content=body, headers={"Inference-Header-Content-Length": header_length,
                                                         "Content-Type": "application/octet-stream"})  # fmt: skip


@pytest.fixture(scope="module")
def videos(clip: Path) -> list[bytes]:
    return [clip.read_bytes(), SAMPLE_VIDEOS[0].read_bytes()]


@pytest.fixture(scope="module")
def classify_scores(server: InProcessServer, videos: list[bytes]) -> list[dict[int, float]]:
    """/classify's softmax scores of every class, per video: what PROBABILITIES must say."""
    out = []
    for v in videos:
        answer = server.http.post("/classify", params={"top_k": len(TINY_LABELS)}, content=v,
                                  headers={"Content-Type": "application/octet-stream"}).json()  # fmt: skip
        out.append({p["index"]: p["score"] for p in answer["predictions"]})
    return out


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# ------------------------------------------------------------------------------------------ REST
def test_server_and_model_metadata_health_and_config(server: InProcessServer) -> None:
    meta = server.http.get("/v2").json()
    assert meta["name"] == "tsm-serve" and {"classification", "binary_tensor_data"} <= set(meta["extensions"])
    assert server.http.get("/v2/health/live").status_code == 200
    assert server.http.get("/v2/health/ready").json() == {"ready": True}
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        model = server.http.get(path).json()
        assert model["name"] == "tiny" and model["versions"] == ["1"]
        assert model["inputs"] == [{"name": "VIDEO", "datatype": "BYTES", "shape": [-1]}]
        assert model["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, len(TINY_LABELS)]}]
        assert server.http.get(f"{path}/ready").status_code == 200
        config = server.http.get(f"{path}/config").json()
        assert config["max_batch_size"] == 0 and config["input"][0]["data_type"] == "TYPE_STRING"
    missing = server.http.get("/v2/models/tiny/versions/7")
    assert missing.status_code == 404 and "no version '7'" in missing.json()["error"]
    assert server.http.get("/v2/models/nope/ready").status_code == 404


def test_infer_answers_the_probabilities_of_classify_for_each_video(
    server: InProcessServer, videos: list[bytes], classify_scores: list[dict[int, float]]
) -> None:
    body, length = v2_body(videos)
    answer = post_infer(server, body, length)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert (out["model_name"], out["model_version"]) == ("tiny", "1")
    [tensor] = out["outputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("PROBABILITIES", "FP32", [2, len(TINY_LABELS)])
    probs = np.array(tensor["data"]).reshape(2, -1)
    for row, scores in zip(probs, classify_scores, strict=True):
        np.testing.assert_allclose(row, [scores[i] for i in range(len(TINY_LABELS))], atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_classification_extension_and_binary_output(
    server: InProcessServer, videos: list[bytes], classify_scores: list[dict[int, float]]
) -> None:
    body, length = v2_body(videos[:1], [{"name": "PROBABILITIES", "parameters": {"classification": 3}}])
    [tensor] = post_infer(server, body, length).json()["outputs"]
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [1, 3]
    best = sorted(classify_scores[0].items(), key=lambda kv: -kv[1])[:3]
    got = [s.split(":", 2) for s in tensor["data"]]
    assert [(int(i), label) for _, i, label in got] == [(i, TINY_LABELS[i]) for i, _ in best]
    assert [float(score) for score, _, _ in got] == pytest.approx([s for _, s in best], abs=1e-6)

    body, length = v2_body(videos, [{"name": "PROBABILITIES", "parameters": {"binary_data": True}}])
    answer = post_infer(server, body, length)
    split = int(answer.headers["Inference-Header-Content-Length"])
    head = json.loads(answer.content[:split])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(answer.content) - split
    probs = np.frombuffer(answer.content[split:], "<f4").reshape(2, -1)
    np.testing.assert_allclose(probs[1], [classify_scores[1][i] for i in range(len(TINY_LABELS))], atol=1e-6)


def test_request_parameters_reach_the_classifier(server: InProcessServer, videos: list[bytes]) -> None:
    body, length = v2_body(videos[:1], clips=2, crops=3, sampling="keyframes")
    assert post_infer(server, body, length).status_code == 200
    body, length = v2_body(videos[:1], clips=999)
    refused = post_infer(server, body, length)
    assert refused.status_code == 400 and "clips" in refused.json()["error"]


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("json data", 400, "binary tensor data"),
        ("wrong input", 400, "unknown input"),
        ("wrong shape", 400, "shape [N]"),
        ("not a video", 415, "not a video file"),
        ("unknown model", 404, "unknown model"),
        ("wrong output", 400, "unknown output"),
        ("bad classification", 400, "classification"),
        ("header too long", 400, "Inference-Header-Content-Length"),
    ],
)
def test_v2_errors_have_the_v2_shape_and_our_status(server: InProcessServer, videos: list[bytes], case: str,
                                                    status: int, words: str) -> None:  # fmt: skip
    body, length, path = *v2_body(videos[:1]), "/v2/models/tiny/infer"
    head = json.loads(body[: int(length)])
    raw = body[int(length) :]
    if case == "json data":
        head["inputs"][0] = {"name": "VIDEO", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}
        raw = b""
    elif case == "wrong input":
        head["inputs"][0]["name"] = "IMAGE"
    elif case == "wrong shape":
        head["inputs"][0]["shape"] = [3]
    elif case == "not a video":
        raw = bytes_tensor([b"this is not a video at all" * 40])
        head["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
    elif case == "unknown model":
        path = "/v2/models/nope/infer"
    elif case == "wrong output":
        head["outputs"] = [{"name": "LOGITS"}]
    elif case == "bad classification":
        head["outputs"] = [{"name": "PROBABILITIES", "parameters": {"classification": 0}}]
    header = json.dumps(head).encode()
    length = str(len(header) + 10_000_000) if case == "header too long" else str(len(header))
    answer = post_infer(server, header + raw, length, path)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert isinstance(error, str) and words in error


def test_malformed_v2_bodies_get_a_v2_400_or_413_never_a_500(server: InProcessServer, videos: list[bytes]) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # 200 KB: deeper than the JSON parser's recursion limit
    answer = post_infer(server, deep, str(len(deep)))
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"], answer.text
    body, length = v2_body(videos[:1])
    headers = {"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"}
    unknown = server.http.post("/v2/models/tiny/infer", content=body, headers={**headers, "Content-Encoding": "br"})
    assert unknown.status_code == 415 and "gzip, deflate or none" in unknown.json()["error"]
    garbage = server.http.post("/v2/models/tiny/infer", content=b"not gzip at all",
                               headers={**headers, "Content-Encoding": "gzip"})  # fmt: skip
    assert garbage.status_code == 400 and "not valid gzip" in garbage.json()["error"]
    bomb = gzip.compress(b"\0" * (UPLOAD_LIMIT + 2 * 1024 * 1024))  # ~ a few KB that inflate past the limit
    inflated = server.http.post("/v2/models/tiny/infer", content=bomb, headers={**headers, "Content-Encoding": "gzip"})
    assert inflated.status_code == 413 and "inflates to more than" in inflated.json()["error"]
    cut = gzip.compress(body)[:-20]
    short = server.http.post("/v2/models/tiny/infer", content=cut, headers={**headers, "Content-Encoding": "gzip"})
    assert short.status_code == 400, short.text
    assert server.http.get("/v2/models/nope/stats").status_code == 404
    assert server.http.get("/v2/models/tiny/versions/9/stats").status_code == 404


def test_v2_timeout_and_priority_parameters(server: InProcessServer, videos: list[bytes]) -> None:
    body, length = v2_body(videos[:1], timeout=1, priority=2)  # timeout in microseconds: passes at once
    answer = post_infer(server, body, length)
    assert answer.status_code == 504 and "deadline" in answer.json()["error"]
    body, length = v2_body(videos[:1], timeout=60_000_000, priority=2)
    assert post_infer(server, body, length).status_code == 200
    for bad in ({"timeout": 0}, {"timeout": "soon"}, {"priority": "high"}):
        body, length = v2_body(videos[:1], **bad)
        answer = post_infer(server, body, length)
        assert answer.status_code == 400, (bad, answer.text)


# ------------------------------------------------------------------------------------------ gRPC
def test_grpc_health_metadata_and_readiness(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "tsm-serve" and "classification" in meta.extensions
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="1")).ready
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
    assert (model.inputs[0].name, model.inputs[0].datatype, list(model.inputs[0].shape)) == ("VIDEO", "BYTES", [-1])
    assert list(model.outputs[0].shape) == [-1, len(TINY_LABELS)]
    with pytest.raises(grpc.RpcError) as missing:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny", version="3"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_infer_equals_rest_and_classify(stub: pb_grpc.GRPCInferenceServiceStub, videos: list[bytes],
                                            classify_scores: list[dict[int, float]]) -> None:  # fmt: skip
    tensor = Infer.InferInputTensor(name="VIDEO", datatype="BYTES", shape=[2])
    answer = stub.ModelInfer(Infer(model_name="tiny", inputs=[tensor], raw_input_contents=[bytes_tensor(videos)]))
    assert list(answer.outputs[0].shape) == [2, len(TINY_LABELS)] and answer.outputs[0].datatype == "FP32"
    probs = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, -1)
    for row, scores in zip(probs, classify_scores, strict=True):
        np.testing.assert_allclose(row, [scores[i] for i in range(len(TINY_LABELS))], atol=1e-6)
    # bytes_contents instead of raw contents; the classification extension
    tensor = Infer.InferInputTensor(name="VIDEO", datatype="BYTES", shape=[1],
                                    contents=pb.InferTensorContents(bytes_contents=videos[:1]))  # fmt: skip
    k = {"classification": pb.InferParameter(int64_param=2)}
    wanted = Infer.InferRequestedOutputTensor(name="PROBABILITIES", parameters=k)
    answer = stub.ModelInfer(Infer(model_name="tiny", model_version="1", inputs=[tensor], outputs=[wanted],
                                   parameters={"clips": pb.InferParameter(int64_param=1)}))  # fmt: skip
    raw = answer.raw_output_contents[0]
    strings, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        strings.append(raw[i + 4 : i + 4 + n].decode())
        i += 4 + n
    best = max(classify_scores[0], key=lambda k: classify_scores[0][k])
    assert len(strings) == 2 and strings[0].split(":", 1)[1] == f"{best}:{TINY_LABELS[best]}"


def test_grpc_errors_carry_our_statuses(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    tensor = Infer.InferInputTensor(name="VIDEO", datatype="BYTES", shape=[1])
    cases = [
        (Infer(model_name="nope", inputs=[tensor], raw_input_contents=[bytes_tensor([b"x"])]),
         grpc.StatusCode.NOT_FOUND),
        (Infer(model_name="tiny", inputs=[tensor], raw_input_contents=[bytes_tensor([b"not a video" * 50])]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (Infer(model_name="tiny", inputs=[tensor], raw_input_contents=[b"\xff\xff"]), grpc.StatusCode.INVALID_ARGUMENT),
        (Infer(model_name="tiny", inputs=[]), grpc.StatusCode.INVALID_ARGUMENT),
        # raw_input_contents and typed contents for the same input: the protocol says one or the other
        (Infer(model_name="tiny", raw_input_contents=[bytes_tensor([b"x"])], inputs=[
            Infer.InferInputTensor(name="VIDEO", datatype="BYTES", shape=[1],
                                   contents=pb.InferTensorContents(bytes_contents=[b"x"]))]),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]  # fmt: skip
    for request, status in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == status, caught.value.details()
        assert caught.value.details()


# ------------------------------------------------------------------------------- real tritonclient
def test_tritonclient_http_and_grpc_work_unchanged(server: InProcessServer, clip: Path,
                                                   classify_scores: list[dict[int, float]]) -> None:  # fmt: skip
    """The real tritonclient (its own virtual environment: it pins an older protobuf), both protocols."""
    python = ROOT / ".venv-triton" / "bin" / "python"
    if not python.exists():
        pytest.fail("`.venv-triton` not found: run `make triton-client` (`make test` does)")
    done = subprocess.run(
        [python, ROOT / "harness" / "triton_check.py", "--http", server.url.removeprefix("http://"),
         "--grpc", server.grpc_target, "--model", "tiny", "--manage", "tiny4", clip, SAMPLE_VIDEOS[0]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    check_protocol_gaps(results.pop("protocol_gaps"))
    repository = results.pop("repository")  # unload, then load tiny4 again: its tables are as before
    assert {"name": "tiny4", "version": "1", "state": "READY", "reason": ""} in repository["index"]
    assert repository["unloaded_ready"] is False and repository["reloaded_ready"] is True
    after = [(v["state"], v["reason"]) for v in repository["index_after_unload"] if v["name"] == "tiny4"]
    assert after in ([("UNLOADING", "unloaded")], [("UNAVAILABLE", "unloaded")]), after  # closing, or closed
    for protocol, out in results.items():
        assert out["live"] and out["ready"] and out["model_ready"], protocol
        assert out["metadata"]["name"] == "tiny" and out["metadata"]["versions"] == ["1"]
        assert out["metadata"]["inputs"] == [{"name": "VIDEO", "datatype": "BYTES", "shape": [-1]}]
        np.testing.assert_allclose(out["single"], out["probabilities"][:1], atol=1e-6, err_msg=protocol)
        error = out["bad_video_error"]
        assert error is not None and "not a video file" in error["message"], protocol
        assert error["status"] in ("415", "StatusCode.INVALID_ARGUMENT"), error
        for row, top3, scores in zip(out["probabilities"], out["top3"], classify_scores, strict=True):
            np.testing.assert_allclose(row, [scores[i] for i in range(len(TINY_LABELS))], atol=1e-6, err_msg=protocol)
            best = sorted(scores, key=lambda i: -scores[i])[:3]
            assert [s.split(":", 1)[1] for s in top3] == [f"{i}:{TINY_LABELS[i]}" for i in best], protocol


def check_protocol_gaps(gaps: dict[str, Any]) -> None:
    """What tritonclient saw of the extensions, statistics, compression, ids and the timeout parameter."""
    assert gaps["extensions"]["http"] == list(oip.HTTP_EXTENSIONS)
    assert set(gaps["extensions"]["http"]) >= {"model_repository", "model_configuration", "statistics"}
    assert gaps["extensions"]["grpc"] == list(oip.GRPC_EXTENSIONS) and "statistics" in gaps["extensions"]["grpc"]
    for coding, probabilities in gaps["compressed"].items():
        np.testing.assert_allclose(probabilities, gaps["plain"], atol=1e-6, err_msg=coding)
    assert gaps["ids"]["http"] == gaps["ids"]["sent"] and gaps["ids"]["grpc"] == gaps["ids"]["sent"]
    error = gaps["timeout_error"]
    assert error is not None and error["status"] == "504" and "deadline" in error["message"], error
    for protocol in ("http", "grpc"):
        (entry,) = gaps["stats"][protocol]["model_stats"]
        assert (entry["name"], entry["version"]) == ("tiny", "1"), protocol
        stats = entry["inference_stats"]
        # tritonclient's gRPC JSON writes uint64 as strings, as protobuf's JSON mapping says
        count = {stage: int(stats[stage]["count"]) for stage in ("success", "queue", "compute_infer")}
        assert count["success"] >= 10 and count["queue"] == count["compute_infer"] == count["success"], protocol
        assert int(stats["fail"]["count"]) >= 1, "the timed-out request"
        assert int(entry["inference_count"]) >= count["success"] and int(entry["execution_count"]) >= 1
        assert int(stats["compute_infer"]["ns"]) > 0 and int(entry["last_inference"]) > 0
        assert entry["batch_stats"] and all(int(b["batch_size"]) >= 1 for b in entry["batch_stats"])
    names = {(e["name"], e["version"]) for e in gaps["stats"]["http_all"]["model_stats"]}
    assert ("tiny", "1") in names and ("tiny4", "1") in names
