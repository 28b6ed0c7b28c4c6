"""Floods and slow clients through the real ports (uvicorn with our guarded protocol, grpc.aio on a
loopback socket): incomplete requests closed on time while /healthz answers, oversized headers refused
at once, the oldest idle connections evicted at the cap, silent gRPC connections closed, unary uploads
past their slots refused unread, and repeated log lines suppressed with a count."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from harness.inproc import InProcessServer
from harness.load import metric
from harness.media import make_video
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.core.logs import RepeatLimit


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(where: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(where, timeout=10)
    sock.settimeout(10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_incomplete_requests_are_closed_on_time_while_healthz_answers(tiny_store: Path) -> None:
    with InProcessServer(tiny_store, http_port=True, header_timeout_s=1.5) as srv:
        where = address(srv.url)
        slow = [connect(where) for _ in range(300)]
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ")  # headers never end
        assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200  # served beside them
        answers = [read_all(sock) for sock in slow]  # the server closes each (else the socket's 10 s timeout)
        for sock in slow:
            sock.close()
        text = srv.metrics()
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"header_timeout" in a for a in answers), answers[0][:200]
    assert metric(text, "tsm_http_connections_closed_total", reason="header_timeout") >= 300


def test_an_oversized_header_is_answered_431_before_it_is_all_read(tiny_store: Path) -> None:
    with InProcessServer(tiny_store, http_port=True, max_header_bytes=16 * 1024) as srv:
        sock = connect(address(srv.url))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: big\r\nX-Big: " + b"a" * 64 * 1024)
        sent_more = 0
        try:  # keep sending a 16 MiB header: the server must not wait for the end of it
            for _ in range(256):
                sock.sendall(b"a" * 64 * 1024)
                sent_more += 1
        except OSError:
            pass
        answer = read_all(sock)
        sock.close()
        assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200
    assert answer.startswith(b"HTTP/1.1 431 ") and b"headers_too_large" in answer, answer[:300]
    assert sent_more < 256, "the connection was closed before the 16 MiB header was sent"


def test_at_the_connection_cap_the_oldest_idle_connections_make_room(tiny_store: Path) -> None:
    with InProcessServer(tiny_store, http_port=True, max_connections=40, header_timeout_s=60) as srv:
        where = address(srv.url)
        idle = [connect(where) for _ in range(60)]  # connect and say nothing
        time.sleep(0.5)
        with httpx.Client(timeout=5) as client:
            assert client.get(f"{srv.url}/healthz").status_code == 200, "a new client still gets in"
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
            sock.close()
        evicted = metric(srv.metrics(), "tsm_http_connections_closed_total", reason="evicted")
    assert closed >= 20 and evicted >= 20, (closed, evicted)


def test_grpc_connections_that_never_send_the_preface_are_closed(tiny_store: Path) -> None:
    with InProcessServer(tiny_store, header_timeout_s=1.0) as srv:
        host, port = srv.grpc_target.rsplit(":", 1)
        silent = [connect((host, int(port))) for _ in range(50)]
        for sock in silent:
            read_all(sock)  # the server closes it, or the socket's 10 s timeout fails the test
            sock.close()
        with grpc.insecure_channel(srv.grpc_target) as channel:
            models = pb_grpc.VideoClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert models.models


def test_unary_uploads_past_their_slots_are_refused_unread_and_streams_still_serve(
    tiny_store: Path, tmp_path: Path
) -> None:
    video = make_video(tmp_path / "big.mp4", width=640, height=360, frames=120, pattern="noise").read_bytes()
    with (
        InProcessServer(tiny_store, grpc_unary_uploads=1, grpc_unary_wait_s=0) as srv,
        grpc.insecure_channel(srv.grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel,
    ):
        stub = pb_grpc.VideoClassifierStub(channel)

        def unary(_: int) -> grpc.StatusCode:
            try:
                stub.Classify(pb.ClassifyRequest(video=video), timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                assert "ClassifyStream" in str(e.details()) and e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                return e.code()

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(unary, range(6)))
        chunks = [pb.ClassifyStreamRequest(options=pb.ClassifyOptions())]
        chunks += [pb.ClassifyStreamRequest(chunk=video[i : i + 256 * 1024]) for i in range(0, len(video), 256 * 1024)]
        streamed = stub.ClassifyStream(iter(chunks), timeout=60)
        assert unary(0) is grpc.StatusCode.OK, "the slot is free again"
    assert codes.count(grpc.StatusCode.OK) >= 1 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, codes
    assert streamed.classification.predictions


def test_repeated_lines_pass_a_few_times_then_report_how_many_were_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tsm.test.floods")
    limit = RepeatLimit(burst=5, window_s=0.3)
    logger.addFilter(limit)
    try:
        with caplog.at_level(logging.INFO, logger="tsm.test.floods"):
            for i in range(1000):
                logger.warning("refused connection %d", i)
            for _ in range(100):
                logger.info("request", extra={"outcome": "ok"})  # answered requests are never limited
            time.sleep(0.35)
            logger.warning("refused connection %d", 1000)
    finally:
        logger.removeFilter(limit)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6 and sum(r.name == "tsm.test.floods" and r.levelno == logging.INFO
                                      for r in caplog.records) == 100  # fmt: skip
    assert getattr(warnings[-1], "suppressed", 0) == 995 and "995 similar lines suppressed" in warnings[-1].getMessage()
