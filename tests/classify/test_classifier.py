"""Classifier.run, the one use case both front doors call: admit → receive → decode → batch →
answer, with its metrics and log line; on the shared in-process server (real models, decode
workers and batchers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from harness.inproc import InProcessServer
from harness.load import metric
from harness.media import truncate
from service.classify.classifier import Classifier
from service.classify.options import ClassifyOptions
from service.classify.result import Classification
from service.core.errors import ErrorKind, ServiceError
from service.core.metrics import STAGES
from service.inference.answers import top_k
from tests.support import TINY_LABELS


async def chunks(data: bytes, pieces: int = 3, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        if pause_s:
            await asyncio.sleep(pause_s)
        yield data[i : i + step]


def classify(
    srv: InProcessServer, data: bytes, options: ClassifyOptions | None = None, timeout_s: float | None = None
) -> Classification:
    classifier = srv.server.require_classifier()
    return srv.run(classifier.run("grpc", options or ClassifyOptions(), chunks(data), "req-1", timeout_s))


def refused(
    srv: InProcessServer, data: bytes, options: ClassifyOptions, timeout_s: float | None = None
) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        classify(srv, data, options, timeout_s)
    return info.value


def counter(srv: InProcessServer, name: str, **labels: str) -> float:
    return metric(srv.metrics(), name, **labels)


def spool_files(srv: InProcessServer) -> list[Path]:
    return list(srv.server.require_classifier().spool_dir.iterdir())


def test_an_answer_has_top_k_labels_video_facts_and_every_stage(server: InProcessServer, clip: Path) -> None:
    before = counter(server, "tsm_requests_total", code="ok", model="tiny4", protocol="grpc")
    result = classify(server, clip.read_bytes(), ClassifyOptions(model="tiny4", top_k=2, clips=2, crops=3))
    assert (result.model, result.version, result.untrained) == ("tiny4", "1", True)
    assert (result.clips, result.crops, result.request_id) == (2, 3, "req-1")
    assert [p.label for p in result.predictions] == [TINY_LABELS[p.index] for p in result.predictions]
    assert len(result.predictions) == 2 and result.predictions[0].score >= result.predictions[1].score
    assert (result.video.width, result.video.height, result.video.frames) == (96, 64, 24)
    assert set(result.timings_ms) == set(STAGES) and all(ms >= 0 for ms in result.timings_ms.values())
    assert counter(server, "tsm_requests_total", code="ok", model="tiny4", protocol="grpc") == before + 1
    assert server.server.require_classifier().in_flight == 0
    assert not spool_files(server), "the upload is deleted once decoded"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [(ClassifyOptions(top_k=6), "top_k must be between 1 and 5"), (ClassifyOptions(clips=11), "clips must be"),
     (ClassifyOptions(crops=2), "crops must be 1"), (ClassifyOptions(sampling="every"), "sampling"),  # type: ignore[arg-type]
     (ClassifyOptions(model="nope"), "unknown model 'nope'")],
)  # fmt: skip
def test_options_are_checked_before_the_upload_is_read(
    server: InProcessServer, options: ClassifyOptions, fragment: str
) -> None:
    """Refused at admission: the upload (here an endless one) is never read and nothing is reserved."""
    classifier: Classifier = server.server.require_classifier()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024
            raise AssertionError("the upload was read")

    with pytest.raises(ServiceError) as info:
        server.run(classifier.run("http", options, endless(), "bad"))
    assert fragment in info.value.message
    assert info.value.kind in (ErrorKind.bad_request, ErrorKind.unknown_model)
    assert all(m.batcher.pending_clips == 0 for m in classifier.models.values())


def test_a_timeout_out_of_range_is_a_bad_request(server: InProcessServer, clip: Path) -> None:
    for timeout_s in (0.0, -1.0, 3601.0):
        error = refused(server, clip.read_bytes(), ClassifyOptions(), timeout_s)
        assert error.kind is ErrorKind.bad_request and "3600" in error.message


def test_an_undecodable_upload_is_counted_by_code_and_its_spool_file_removed(
    server: InProcessServer, clip: Path, tmp_path: Path
) -> None:
    before = counter(server, "tsm_decode_failures_total", reason="undecodable_video")
    cut = truncate(clip, tmp_path / "cut.mp4", 0.5).read_bytes()
    assert refused(server, cut, ClassifyOptions()).kind is ErrorKind.undecodable_video
    assert counter(server, "tsm_decode_failures_total", reason="undecodable_video") == before + 1
    assert not spool_files(server)
    assert server.server.require_classifier().models["tiny"].batcher.pending_clips == 0


def test_a_deadline_that_passes_during_the_upload(server: InProcessServer, clip: Path) -> None:
    classifier = server.server.require_classifier()
    with pytest.raises(ServiceError) as info:
        server.run(classifier.run("http", ClassifyOptions(), chunks(clip.read_bytes(), 4, 0.1), "slow", 0.15))
    assert info.value.kind is ErrorKind.deadline_exceeded
    assert not spool_files(server) and classifier.in_flight == 0


def test_overload_and_draining_are_refused_and_counted(tiny_store: Path, clip: Path) -> None:
    """One admitted request holds the only clip slot: the next is overloaded; after drain, draining."""
    with InProcessServer(tiny_store, max_queue_clips=1, max_batch_clips=2) as srv:
        classifier = srv.server.require_classifier()
        data = clip.read_bytes()

        async def scenario() -> tuple[ServiceError, Classification]:
            held = asyncio.create_task(classifier.run("http", ClassifyOptions(), chunks(data, 5, 0.1), "held"))
            while classifier.models["tiny"].batcher.pending_clips == 0:
                await asyncio.sleep(0.01)
            try:
                await classifier.run("http", ClassifyOptions(), chunks(data), "second")
            except ServiceError as e:
                return e, await held
            raise AssertionError("the second request was admitted")

        error, first = srv.run(scenario())
        assert error.kind is ErrorKind.overloaded and error.retry_after_s is not None and error.retry_after_s > 0
        assert first.predictions
        assert counter(srv, "tsm_rejected_total", reason="overloaded") == 1.0
        assert classifier.models["tiny"].batcher.pending_clips == 0, "the reservation is returned"
        assert classify(srv, data).predictions, "the slot is free again"
        srv.run(srv.server.drain())
        with pytest.raises(ServiceError) as info:
            srv.run(classifier.run("http", ClassifyOptions(), chunks(data), "late"))
        assert info.value.kind is ErrorKind.draining
        assert counter(srv, "tsm_rejected_total", reason="draining") == 1.0


def test_every_request_logs_one_line_with_its_outcome(
    server: InProcessServer, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tsm.request"):
        classify(server, clip.read_bytes())
        refused(server, b"not a video at all" * 100, ClassifyOptions())
    lines = [r for r in caplog.records if r.name == "tsm.request"]
    assert [(r.__dict__["outcome"], r.__dict__["protocol"], r.__dict__["model"]) for r in lines] == [
        ("ok", "grpc", "tiny"),
        ("unsupported_media_type", "grpc", "tiny"),
    ]
    assert set(lines[0].__dict__["timings_ms"]) == set(STAGES)


def test_top_k_is_the_softmax_of_the_logits_best_first() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0], np.float32)
    best = top_k(logits, ["a", "b", "c", "d"], 3)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [p.index for p in best] == [1, 3, 2], "ties keep index order"
    assert [p.label for p in best] == ["b", "d", "c"]
    np.testing.assert_allclose([p.score for p in best], probs[[1, 3, 2]], rtol=1e-6)
    huge = top_k(np.array([1000.0, 0.0], np.float32), ["x", "y"], 2)
    assert huge[0].score == pytest.approx(1.0) and np.isfinite([p.score for p in huge]).all()
