"""Models load, unload and roll versions without a restart (``/v2/repository``, ``TSM_MODEL_POLL_S``):
in-flight requests finish on the version they started on, a broken new version is refused while the
old one serves, and model management needs an admin key when keys are configured."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from harness.entries import write_random_entry
from harness.inproc import InProcessServer
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from tests.support import ROOT, TINY_LABELS

SMALL = {"width_mult": 0.5, "input_size": 64, "scale_size": 72}
MP4 = {"Content-Type": "video/mp4"}


def add_version(store: Path, name: str, version: str, seed: int) -> Path:
    return write_random_entry(store, name=name, labels=TINY_LABELS, version=version, seed=seed, **SMALL)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    add_version(tmp_path, "tiny", "1", seed=1)
    add_version(tmp_path, "other", "1", seed=5)
    return tmp_path


def index(srv: InProcessServer, **body: bool) -> dict[tuple[str, str], tuple[str, str]]:
    answer = srv.http.post("/v2/repository/index", json=body or None)
    assert answer.status_code == 200, answer.text
    return {(v["name"], v["version"]): (v["state"], v["reason"]) for v in answer.json()}


def served(srv: InProcessServer) -> list[tuple[str, str]]:
    return [(m["name"], m["version"]) for m in srv.http.get("/v1/models").json()["models"]]


def test_a_new_version_rolls_in_while_requests_are_in_flight_and_none_fails(store: Path, clip: Path) -> None:
    video = clip.read_bytes()
    with InProcessServer(store, model_control="explicit") as srv:
        stop = asyncio.Event()

        async def traffic() -> list[tuple[int, str]]:
            answers = []
            async with srv.async_client() as client:
                while not stop.is_set():
                    r = await client.post("/classify", params={"model": "other"}, content=video, headers=MP4)
                    answers.append((r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text))
            return answers

        async def roll() -> list[tuple[int, str]]:
            async with srv.async_client() as client:
                workers = [asyncio.create_task(traffic()) for _ in range(4)]
                await asyncio.sleep(0.5)
                add_version(store, "other", "2", seed=6)
                loaded = await client.post("/v2/repository/models/other/load")
                assert loaded.status_code == 200 and loaded.json() == {"name": "other", "versions": ["2"]}
                await asyncio.sleep(0.5)
                stop.set()
                return [a for w in workers for a in await w]

        answers = srv.run(roll())
        assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200]
        versions = [v for _, v in answers]
        assert versions[0] == "1" and "2" in versions, "requests before the load got 1, after it 2"
        assert served(srv) == [("other", "2"), ("tiny", "1")]
        for _ in range(100):  # version 1 closes once its last request is done
            if index(srv)["other", "1"][0] == "UNAVAILABLE":
                break
            time.sleep(0.05)
        assert index(srv)["other", "1"] == ("UNAVAILABLE", "not in the version policy")
        metrics = srv.metrics()
        assert 'tsm_model_state{name="other",state="READY",version="2"} 1.0' in metrics
        assert 'tsm_model_state{name="other",state="UNAVAILABLE",version="1"} 1.0' in metrics
        info = [line for line in metrics.splitlines() if line.startswith("tsm_model_info{") and 'name="other"' in line]
        assert len(info) == 1 and 'version="2"' in info[0], "the closed version's info series is gone"


def test_unload_and_load_again(store: Path, clip: Path) -> None:
    with InProcessServer(store, model_control="explicit") as srv:
        assert srv.http.post("/v2/repository/models/other/unload").status_code == 200
        assert served(srv) == [("tiny", "1")]
        refused = srv.http.post("/classify", params={"model": "other"}, content=clip.read_bytes(), headers=MP4)
        assert refused.status_code == 404 and "unknown model 'other'" in refused.json()["error"]["message"]
        assert srv.http.get("/v2/models/other/ready").status_code == 404
        assert index(srv)["other", "1"] == ("UNAVAILABLE", "unloaded")
        assert index(srv, ready=True) == {("tiny", "1"): ("READY", "")}
        assert srv.http.post("/v2/repository/models/other/unload").status_code == 200, "unloading twice is fine"

        default = srv.http.post("/v2/repository/models/tiny/unload")
        assert default.status_code == 409 and "tiny is the default model" in default.json()["error"]
        unknown = srv.http.post("/v2/repository/models/nope/load")
        assert unknown.status_code == 404 and "'nope' is not in the model store" in unknown.json()["error"]

        assert srv.http.post("/v2/repository/models/other/load").status_code == 200
        again = srv.http.post("/classify", params={"model": "other"}, content=clip.read_bytes(), headers=MP4)
        assert again.status_code == 200 and served(srv) == [("other", "1"), ("tiny", "1")]
        repository = srv.http.get("/v1/models").json()["repository"]
        assert {"name": "other", "version": "1", "state": "READY", "reason": ""} in repository


def test_readiness_reflects_loading_and_grpc_lists_the_repository(store: Path) -> None:
    with InProcessServer(store, model_control="explicit") as srv:
        add_version(store, "third", "1", seed=7)

        async def load_and_watch() -> list[int]:
            async with srv.async_client() as client:
                load = asyncio.create_task(client.post("/v2/repository/models/third/load"))
                seen = []
                while not load.done():
                    seen.append((await client.get("/v2/models/third/ready")).status_code)
                    await asyncio.sleep(0.01)
                assert (await load).status_code == 200
                seen.append((await client.get("/v2/models/third/ready")).status_code)
                return seen

        seen = srv.run(load_and_watch())
        assert 503 in seen and seen[-1] == 200, seen  # loading (warming up), then ready
        with grpc.insecure_channel(srv.grpc_target) as channel:
            listed = pb_grpc.VideoClassifierStub(channel).ListModels(pb.ListModelsRequest())
        assert [(m.name, m.version) for m in listed.models] == [("other", "1"), ("third", "1"), ("tiny", "1")]
        assert {(v.name, v.version, v.state) for v in listed.repository} == {
            ("other", "1", "READY"),
            ("third", "1", "READY"),
            ("tiny", "1", "READY"),
        }


def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(store: Path, clip: Path) -> None:
    with InProcessServer(store, model_control="explicit") as srv:
        before = srv.http.post("/classify", params={"model": "other"}, content=clip.read_bytes(), headers=MP4)
        entry = add_version(store, "other", "2", seed=6)
        with (entry / "model.safetensors").open("r+b") as f:  # one flipped byte: the sha256 no longer matches
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        refused = srv.http.post("/v2/repository/models/other/load")
        assert refused.status_code == 422, refused.text
        message = refused.json()["error"]
        assert "model other version 2 was refused" in message and "sha256" in message, message
        assert "version(s) 1 keep serving" in message
        state, reason = index(srv)["other", "2"]
        assert state == "UNAVAILABLE" and reason.startswith("refused:") and "sha256" in reason
        after = srv.http.post("/classify", params={"model": "other"}, content=clip.read_bytes(), headers=MP4)
        assert after.status_code == 200 and after.json()["model"]["version"] == "1"
        assert after.json()["predictions"] == before.json()["predictions"]

        shutil.rmtree(entry)  # a model.json that does not validate is refused the same way
        entry.mkdir()
        (entry / "model.json").write_text('{"name": "other"}')
        refused = srv.http.post("/v2/repository/models/other/load")
        assert refused.status_code == 422 and "model.json is invalid" in refused.json()["error"]
        assert served(srv) == [("other", "1"), ("tiny", "1")]


def test_a_load_that_the_version_policy_cannot_satisfy_is_refused(store: Path) -> None:
    with InProcessServer(store, version_policy=["other=specific:1"], model_control="explicit") as srv:
        shutil.rmtree(store / "other" / "1")
        add_version(store, "other", "2", seed=6)
        refused = srv.http.post("/v2/repository/models/other/load")
        assert refused.status_code == 422, refused.text
        assert "asks for version(s) 1 of other; the store has 2" in refused.json()["error"]
        assert served(srv) == [("other", "1"), ("tiny", "1")], "what serves keeps serving"


def test_polling_picks_up_new_and_removed_entries(store: Path, clip: Path) -> None:
    def wait_for(srv: InProcessServer, expected: list[tuple[str, str]]) -> None:
        for _ in range(200):
            if served(srv) == expected:
                return
            time.sleep(0.05)
        assert served(srv) == expected

    with InProcessServer(store, model_poll_s=0.1, model_control="explicit") as srv:
        add_version(store, "other", "2", seed=6)
        wait_for(srv, [("other", "2"), ("tiny", "1")])
        add_version(store, "third", "1", seed=7)
        wait_for(srv, [("other", "2"), ("third", "1"), ("tiny", "1")])
        answer = srv.http.post("/classify", params={"model": "third"}, content=clip.read_bytes(), headers=MP4)
        assert answer.status_code == 200
        shutil.rmtree(store / "third")
        wait_for(srv, [("other", "2"), ("tiny", "1")])
        assert ("third", "1") not in index(srv) or index(srv)["third", "1"][0] != "READY"
        shutil.rmtree(store / "tiny")  # the default model keeps serving (and the log says why)
        time.sleep(0.3)
        assert ("tiny", "1") in served(srv)
        # A model unloaded by a call stays unloaded, though its entry is still in the store.
        assert srv.http.post("/v2/repository/models/other/unload").status_code == 200
        time.sleep(0.3)
        assert served(srv) == [("tiny", "1")]


def test_model_management_needs_an_admin_key_when_keys_are_configured(store: Path) -> None:
    with InProcessServer(store, api_keys=["user-key"], admin_api_keys=["admin-key"]) as srv:
        url = "/v2/repository/index"
        assert srv.http.post(url).status_code == 401
        user = srv.http.post(url, headers={"Authorization": "Bearer user-key"})
        assert user.status_code == 403 and "use an admin key" in user.json()["error"]
        assert srv.http.post(url, headers={"X-API-Key": "admin-key"}).status_code == 200
        wrong = srv.http.post(url, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
        assert srv.http.get("/v1/models", headers={"Authorization": "Bearer admin-key"}).status_code == 200
    with InProcessServer(store, api_keys=["user-key"]) as srv:
        off = srv.http.post("/v2/repository/models/other/unload", headers={"Authorization": "Bearer user-key"})
        assert off.status_code == 403 and "TSM_ADMIN_API_KEYS" in off.json()["error"]
        assert ("other", "1") in served_with_key(srv, "user-key")


def test_model_control_is_off_by_default_and_says_which_setting_turns_it_on(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), InProcessServer(store) as srv:
        for action in ("load", "unload"):
            refused = srv.http.post(f"/v2/repository/models/other/{action}")
            assert refused.status_code == 403, refused.text
            assert "TSM_MODEL_CONTROL=explicit" in refused.json()["error"]
        assert ("other", "1") in served(srv), "nothing was unloaded"
        assert srv.http.post("/v2/repository/index").status_code == 200, "the index is read-only: still served"
    assert "model control none: /v2/repository load and unload are refused" in caplog.text
    # Admin keys are an explicit choice too: with them, admins may load and unload.
    with InProcessServer(store, admin_api_keys=["admin-key"]) as srv:
        admin = {"Authorization": "Bearer admin-key"}
        assert srv.http.post("/v2/repository/models/other/unload", headers=admin).status_code == 200
        assert srv.http.post("/v2/repository/models/other/load").status_code == 401
        assert srv.http.post("/v2/repository/models/other/load", headers=admin).status_code == 200


def served_with_key(srv: InProcessServer, key: str) -> list[tuple[str, str]]:
    models = srv.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["models"]
    return [(m["name"], m["version"]) for m in models]


def test_the_repository_routes_keep_their_openapi_promises(store: Path) -> None:
    """schemathesis on the model management routes alone, on a server of their own (they change it)."""
    with InProcessServer(store, http_port=True, model_control="explicit") as srv:
        done = subprocess.run(
            [ROOT / ".venv/bin/schemathesis", "--config-file", ROOT / "tests/schemathesis.toml", "run",
             f"{srv.url}/openapi.json", "--max-examples", "15", "--checks", "all", "--include-path-regex",
             "^/v2/repository/", "--exclude-checks", "positive_data_acceptance", "--seed", "7"],
            capture_output=True, text=True, timeout=240, cwd=ROOT / "tests",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:]
        assert ("tiny", "1") in served(srv), "the default model is never unloaded"
