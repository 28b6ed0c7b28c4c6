"""Server, the composition root: start-up from the store, readiness, model info, gauges, drain and
stop, on real models, decode workers and batchers in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.inproc import InProcessServer
from harness.load import metric
from service.classify.options import ClassifyOptions
from service.core.config import Settings
from service.core.errors import ErrorKind, ServiceError
from service.management.catalog import ModelInfo
from service.models.store import StoreError
from service.server import Server
from service.video.sampling import SamplingSpec
from tests.support import TINY_LABELS


def test_models_info_describes_every_loaded_model(server: InProcessServer) -> None:
    infos = server.server.catalog.models_info()
    assert [i.name for i in infos] == ["tiny", "tiny4"]
    tiny = server.server.catalog.model_info("tiny")
    assert tiny == ModelInfo(
        name="tiny", version="1", default=True, arch="mobilenetv2", num_segments=8, num_classes=len(TINY_LABELS),
        input_size=64, scale_size=72, resize="short_side", shift=True, untrained=True, source=tiny.source, online=False,
        engine=tiny.engine, precision=tiny.precision,
    )  # fmt: skip
    # auto: the faster of the verified engines here (bfloat16 where the CPU has it natively)
    assert (tiny.engine, tiny.precision) in {("openvino", "float32"), ("openvino", "bfloat16"), ("torch", "float32")}
    with pytest.raises(ServiceError) as info:
        server.server.catalog.model_info("nope")
    assert info.value.kind is ErrorKind.unknown_model and "tiny, tiny4" in info.value.message


async def start_then_stop(server: Server) -> None:
    try:
        await server.start()
    finally:
        await server.stop()


def test_a_missing_model_fails_the_start_with_its_name(tiny_store: Path) -> None:
    server = Server(Settings(model_store=tiny_store, default_model="absent", models=["tiny", "ghost"]))

    with pytest.raises(
        StoreError, match=rf"model\(s\) absent, ghost not found in the model store {tiny_store} .*tiny, tiny4"
    ):
        asyncio.run(start_then_stop(server))
    assert server.startup_error is not None and "absent" in server.startup_error
    assert not server.ready
    with pytest.raises(ServiceError) as info:
        server.require_classifier()
    assert info.value.kind is ErrorKind.not_ready


def test_settings_that_oversubscribe_the_cpu_fail_the_start_with_what_to_change(tiny_store: Path) -> None:
    server = Server(Settings(model_store=tiny_store, default_model="tiny", cpu_budget=2, torch_threads=3))

    with pytest.raises(ServiceError, match=r"CPU budget exceeded: TSM_TORCH_THREADS = 3 threads on 2 core"):
        asyncio.run(start_then_stop(server))
    assert server.startup_error is not None and "TSM_TORCH_THREADS" in server.startup_error


def test_only_the_named_models_and_the_default_load(tiny_store: Path) -> None:
    with InProcessServer(tiny_store, models=["tiny4"], default_model="tiny", max_batch_clips=2) as srv:
        assert [i.name for i in srv.server.catalog.models_info()] == ["tiny", "tiny4"]
        info = srv.http.get("/v1/models/tiny").json()
        assert info["default"] is True
    with InProcessServer(tiny_store, models=["tiny4"], default_model="tiny4", max_batch_clips=2, engine="torch") as srv:
        assert [i.name for i in srv.server.catalog.models_info()] == ["tiny4"]
        assert srv.http.get("/v1/models/tiny4").json()["engine"] == "torch"  # the engine asked for
        text = srv.metrics()
        assert metric(text, "tsm_ready") == 1.0
        labels = {"arch": "mobilenetv2", "device": "cpu", "dtype": "float32", "engine": "torch", "name": "tiny4"}
        assert metric(text, "tsm_model_info", **labels) == 1.0


def spec(srv: InProcessServer) -> SamplingSpec:
    c = srv.server.require_classifier().models["tiny"].entry.config
    return SamplingSpec(c.num_segments, c.scale_size, c.input_size)


def test_gauges_follow_the_pool_and_dropped_clips_are_counted(tiny_store: Path, clip: Path) -> None:
    with InProcessServer(tiny_store, decode_workers=1, max_batch_clips=2) as srv:
        text = srv.metrics()
        assert metric(text, "tsm_decode_workers", state="workers") == 1.0
        assert metric(text, "tsm_decode_workers", state="idle") == 1.0
        assert metric(text, "tsm_queue_clips", model="tiny") == 0.0
        classifier = srv.server.require_classifier()
        batcher = classifier.models["tiny"].batcher

        async def expire_in_the_queue() -> ServiceError:
            with batcher.reserve(1) as reservation:
                frames = await classifier.pool.decode(clip, spec(srv))
                try:
                    await batcher.infer(frames.frames[:1], reservation, deadline=0.0)
                except ServiceError as e:
                    return e
            raise AssertionError("an expired request was scored")

        error = srv.run(expire_in_the_queue())
        assert error.kind is ErrorKind.deadline_exceeded
        text = srv.metrics()
        assert metric(text, "tsm_dropped_clips_total", model="tiny", reason="expired") == 1.0
        assert metric(text, "tsm_decode_jobs_total") == 1.0
        assert metric(srv.metrics(), "tsm_dropped_clips_total", model="tiny", reason="expired") == 1.0, "counted once"


def test_drain_refuses_new_work_and_stop_removes_the_spool(tiny_store: Path, clip: Path) -> None:
    srv = InProcessServer(tiny_store, max_batch_clips=2)
    try:
        spool = srv.server.require_classifier().spool_dir
        assert spool.is_dir() and srv.server.ready
        srv.run(srv.server.drain())
        assert not srv.server.ready
        with pytest.raises(ServiceError) as info:
            srv.server.require_classifier()
        assert info.value.kind is ErrorKind.draining
        ready = srv.http.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"ready": False, "reason": "draining"})
        for v2 in ("/v2/health/ready", "/v2/models/tiny/ready"):  # the Open Inference Protocol says it too
            answer = srv.http.get(v2)
            assert (answer.status_code, answer.json()) == (503, {"error": "not ready: draining"}), v2
        with clip.open("rb") as f:
            refused = srv.http.post("/classify", files={"file": ("c.mp4", f)})
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "draining")
    finally:
        srv.close()
    assert not spool.exists(), "the server's own spool directory is removed at stop"


def test_requests_past_the_drain_budget_are_answered_draining(tiny_store: Path, clip: Path) -> None:
    """abort_in_flight: a request still running when the budget ends gets ``draining``, not a bare cancel."""
    with InProcessServer(
        tiny_store, max_batch_clips=2, max_delay_ms=20_000, drain_timeout_s=0.2
    ) as srv:  # 1 clip: never full
        classifier = srv.server.require_classifier()
        data = clip.read_bytes()

        async def upload() -> AsyncIterator[bytes]:
            yield data

        async def scenario() -> BaseException | None:
            task = asyncio.create_task(classifier.run("http", ClassifyOptions(), upload(), "held"))
            while classifier.in_flight == 0 or not classifier.models["tiny"].batcher._waiting:
                await asyncio.sleep(0.01)
            await srv.server.drain()  # the batch waits 20 s: the 0.2 s budget runs out
            await srv.server.abort_in_flight()
            try:
                await task
            except ServiceError as e:
                return e
            return None

        error = srv.run(scenario())
        assert isinstance(error, ServiceError) and error.kind is ErrorKind.draining
        assert classifier.in_flight == 0
        assert metric(srv.metrics(), "tsm_requests_total", code="draining", model="tiny", protocol="http") == 1.0
