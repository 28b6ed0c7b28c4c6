"""Several versions of a model served at once (``TSM_VERSION_POLICY``), pinned as NAME:VERSION on our
own routes and as /versions/{v} in the Open Inference Protocol; unpinned requests get the newest."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from harness.entries import write_random_entry
from harness.inproc import InProcessServer
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.core.config import Settings
from service.models.store import StoreError
from tests.support import TINY_LABELS

SMALL = {"width_mult": 0.5, "input_size": 64, "scale_size": 72}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny in versions 1, 2 and 10 (different weights); other in version 1."""
    store = tmp_path_factory.mktemp("versions")
    for version, seed in (("1", 1), ("2", 2), ("10", 3)):
        write_random_entry(store, name="tiny", labels=TINY_LABELS, version=version, seed=seed, **SMALL)
    write_random_entry(store, name="other", labels=TINY_LABELS[:3], **SMALL)
    return store


@pytest.fixture(scope="module")
def srv(store: Path) -> Iterator[InProcessServer]:
    with InProcessServer(store, version_policy=["tiny=latest:2"]) as s:
        yield s


def classify(srv: InProcessServer, clip: Path, model: str) -> dict[str, object]:
    answer = srv.http.post("/classify", params={"model": model, "top_k": 5}, content=clip.read_bytes(),
                           headers={"Content-Type": "video/mp4"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def scores(answer: dict[str, object]) -> dict[int, float]:
    return {p["index"]: p["score"] for p in answer["predictions"]}  # type: ignore[attr-defined]


def test_the_policy_serves_the_newest_versions_and_requests_pin_one(srv: InProcessServer, clip: Path) -> None:
    listed = [(m["name"], m["version"]) for m in srv.http.get("/v1/models").json()["models"]]
    assert listed == [("other", "1"), ("tiny", "2"), ("tiny", "10")]  # latest:2 of 1, 2, 10; numeric order
    newest, pinned, old = classify(srv, clip, "tiny"), classify(srv, clip, "tiny:10"), classify(srv, clip, "tiny:2")
    assert newest["model"]["version"] == pinned["model"]["version"] == "10"  # type: ignore[index]
    assert old["model"]["version"] == "2"  # type: ignore[index]
    assert scores(newest) == pytest.approx(scores(pinned)) and scores(old) != pytest.approx(scores(newest))
    refused = srv.http.post("/classify", params={"model": "tiny:1"}, content=clip.read_bytes(),
                            headers={"Content-Type": "video/mp4"})  # fmt: skip
    assert refused.status_code == 404 and "unknown model 'tiny:1'" in refused.json()["error"]["message"]
    assert srv.http.get("/v1/models/tiny:2").json()["version"] == "2"
    with grpc.insecure_channel(srv.grpc_target) as channel:
        answer = pb_grpc.VideoClassifierStub(channel).Classify(
            pb.ClassifyRequest(options=pb.ClassifyOptions(model="tiny:2", top_k=5), video=clip.read_bytes())
        )
    assert answer.classification.model.version == "2"
    assert {p.index: p.score for p in answer.classification.predictions} == pytest.approx(scores(old))


def test_the_open_inference_protocol_lists_and_pins_versions(srv: InProcessServer, clip: Path) -> None:
    meta = srv.http.get("/v2/models/tiny").json()
    assert meta["versions"] == ["2", "10"]
    assert srv.http.get("/v2/models/tiny/versions/2/ready").status_code == 200
    missing = srv.http.get("/v2/models/tiny/versions/1")
    assert missing.status_code == 404 and "served: 2, 10" in missing.json()["error"]
    video = clip.read_bytes()
    raw = struct.pack("<I", len(video)) + video
    head = json.dumps({"inputs": [{"name": "VIDEO", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()  # fmt: skip
    answer = srv.http.post("/v2/models/tiny/versions/2/infer", content=head + raw,
                           headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "2"
    probs = answer.json()["outputs"][0]["data"]
    old = scores(classify(srv, clip, "tiny:2"))
    assert probs == pytest.approx([old[i] for i in range(len(TINY_LABELS))], abs=1e-6)


def test_specific_versions_and_bad_policies(store: Path, clip: Path) -> None:
    with InProcessServer(store, version_policy=["*=latest:1", "tiny=specific:1"]) as s:
        assert classify(s, clip, "tiny")["model"]["version"] == "1"  # type: ignore[index]
        assert [m["version"] for m in s.http.get("/v1/models").json()["models"]] == ["1", "1"]
    with pytest.raises(ValidationError, match="NAME=latest:N or NAME=specific"):
        Settings(version_policy=["tiny=newest"])
    with pytest.raises(StoreError, match=re.escape("asks for version(s) 7 of tiny; the store has 1, 2, 10")):
        InProcessServer(store, version_policy=["tiny=specific:7"])
