"""Under load and under attack, over loopback: overload and a short fuzzing run against the real
server in this process; drain under load (a signal) and a short soak (the process's memory,
descriptors and decode workers) against real server processes. The full-size runs are
bench/soak.py, bench/fuzz.py and bench/e2e.sh; these are bounded (a few hundred requests in all)
and assert behaviour, not speed."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from harness.fuzz import cases, make_seeds, send_cases, verdict
from harness.inproc import InProcessServer
from harness.load import (
    GrpcTarget,
    HttpTarget,
    Record,
    Video,
    closed_loop,
    open_loop,
    percentile,
    require_loopback,
    rss_mb,
)
from harness.media import make_video
from harness.process import ServerProcess
from harness.soak import decode_workers, judge, make_mix, soak

HANG_S = 60.0  # liveness bound: no single answer may take longer (decode timeouts here are 5-10 s)


@pytest.fixture(scope="module")
def busy_clip(tmp_path_factory: pytest.TempPathFactory) -> Video:
    """Long enough to decode (~0.1 s) that requests overlap, small enough for many of them."""
    path = make_video(tmp_path_factory.mktemp("resilience") / "busy.mp4", width=320, height=240, frames=100,
                      pattern="corner", gop=25)  # fmt: skip
    return Video(path.name, path.read_bytes())


def same_scores(record: Record, reference: Record) -> bool:
    """Batching with other requests must not change an answer (beyond float noise)."""
    return record.scores.keys() == reference.scores.keys() and all(
        abs(record.scores[i] - reference.scores[i]) < 1e-4 for i in reference.scores
    )


def test_load_generator_refuses_non_loopback_targets() -> None:
    for host in ("10.0.0.1", "example.com", "0.0.0.0", "192.168.1.2"):
        with pytest.raises(ValueError, match="loopback"):
            require_loopback(host)
    with pytest.raises(ValueError, match="loopback"):
        HttpTarget("http://10.1.2.3:8000", 1)
    with pytest.raises(ValueError, match="loopback"):
        GrpcTarget("10.1.2.3:50051")
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        require_loopback(host)


def test_overload_refuses_the_excess_fast_and_answers_the_rest_correctly(tiny_store: Path, busy_clip: Video) -> None:
    """4× capacity: 16 clients against a queue of 4 clips. HTTP answers 200 or 429 with
    Retry-After, gRPC OK or RESOURCE_EXHAUSTED; every 200 equals the lone answer; memory is flat.
    The server runs in this process: its memory is this process's plus its own decode workers'."""
    pid = os.getpid()
    elsewhere = set(decode_workers(pid))  # other in-process servers' workers (none recycle while idle)
    srv = InProcessServer(tiny_store, http_port=True, max_queue_clips=4, max_delay_ms=20)

    def tree_mb() -> float:
        return rss_mb(pid) + sum(rss_mb(c) for c in decode_workers(pid) if c not in elsewhere)

    async def scenario() -> tuple[Record, list[list[Record]], list[Record], list[Record], list[float]]:
        http = HttpTarget(srv.url, 16, timeout_s=HANG_S, params={"top_k": 5})
        rpc = GrpcTarget(srv.grpc_target, timeout_s=HANG_S, top_k=5)
        rounds: list[list[Record]] = []
        rss: list[float] = []
        try:
            reference = await http.send(busy_clip, time.monotonic())
            for _ in range(2):
                records, _ = await closed_loop(http, [busy_clip], 16, 100, HANG_S)
                rounds.append(records)
                rss.append(tree_mb())
            grpc_records, _ = await closed_loop(rpc, [busy_clip], 16, 60, HANG_S)
            # open loop well above capacity: arrivals keep coming whatever the answers
            open_records, _ = await open_loop(http, [busy_clip], 100.0, 60, HANG_S)
        finally:
            await http.close()
            await rpc.close()
        return reference, rounds, grpc_records, open_records, rss

    try:
        reference, rounds, grpc_records, open_records, rss = asyncio.run(scenario())
        assert reference.ok, reference
        http_records = [r for records in rounds for r in records] + open_records
        print("overload:", Counter(r.status for r in http_records), Counter(r.status for r in grpc_records), rss)
        assert {r.status for r in http_records} <= {"200", "429"}, [r for r in http_records if r.status != "200"][:3]
        assert {r.status for r in grpc_records} <= {"OK", "RESOURCE_EXHAUSTED"}
        refused = [r for r in http_records if r.status == "429"]
        grpc_refused = [r for r in grpc_records if r.status == "RESOURCE_EXHAUSTED"]
        accepted = [r for r in [*http_records, *grpc_records] if r.ok]
        assert refused and grpc_refused and len(accepted) >= 8, "4x capacity must both refuse and serve"
        assert all(r.code == "overloaded" and r.retry_after and int(r.retry_after) >= 1 for r in refused)
        assert all(r.code == "overloaded" and r.retry_after and float(r.retry_after) >= 1 for r in grpc_refused)
        assert all(same_scores(r, reference) for r in accepted), "an accepted request was answered wrongly"
        # refused before the upload is read: faster than an answer that needs decoding and inference
        refused_s = percentile([r.latency_s for r in refused], 50)
        served_s = percentile([r.latency_s for r in accepted], 50)
        assert refused_s < served_s, (refused_s, served_s)
        assert max(r.latency_s for r in [*http_records, *grpc_records]) < HANG_S
        # bounded memory: a second identical round does not grow the process tree
        assert rss[1] < 4096 and rss[1] < rss[0] * 1.10 + 30, rss
    finally:
        srv.close()  # drains and stops; raises if the server cannot


def test_sigterm_under_load_completes_in_flight_refuses_new_and_loses_nothing(
    tiny_store: Path, busy_clip: Video
) -> None:
    """HTTP and gRPC closed loops running; SIGTERM. Every request ends as success or an explicit
    refusal (503 / UNAVAILABLE / connection refused), requests in flight at the signal succeed,
    none hangs, and the process exits 0 within the drain budget."""
    drain_s = 10.0
    proc = ServerProcess(tiny_store, drain_timeout_s=drain_s, max_batch_clips=4)
    signalled_at: list[float] = []

    async def scenario() -> tuple[list[Record], list[Record], float]:
        http = HttpTarget(proc.url, 8, timeout_s=HANG_S)
        rpc = GrpcTarget(f"127.0.0.1:{proc.grpc_port}", timeout_s=HANG_S)
        done = 0
        t0 = time.monotonic()

        def count(record: Record) -> None:
            nonlocal done
            done += 1

        async def signal_mid_run() -> None:
            while done < 12 and time.monotonic() - t0 < HANG_S:
                await asyncio.sleep(0.02)
            signalled_at.append(time.monotonic())
            proc.terminate()

        def refused(record: Record) -> bool:  # a client that was turned away stops, as a real one would
            return not record.ok

        try:
            (http_records, _), (grpc_records, _), _ = await asyncio.gather(
                closed_loop(http, [busy_clip], 8, 300, HANG_S, stop_after=refused, on_record=count, origin=t0),
                closed_loop(rpc, [busy_clip], 4, 150, HANG_S, stop_after=refused, on_record=count, origin=t0),
                signal_mid_run(),
            )
        finally:
            await http.close()
            await rpc.close()
        return http_records, grpc_records, signalled_at[0] - t0

    try:
        http_records, grpc_records, signal_s = asyncio.run(scenario())
        exit_code = proc.proc.wait(timeout=drain_s + 30)
    finally:
        code = proc.stop()
    print("drain:", signal_s, Counter(r.status for r in http_records), Counter(r.status for r in grpc_records))
    assert exit_code == 0 and code == 0, proc.output()
    http_status = {r.status for r in http_records}
    assert http_status <= {"200", "503", "connect_error"}, [r for r in http_records if not r.ok]
    assert {r.status for r in grpc_records} <= {"OK", "UNAVAILABLE"}, [r for r in grpc_records if not r.ok]
    assert all(r.code in ("", "draining") for r in [*http_records, *grpc_records])
    everything = [*http_records, *grpc_records]
    assert max(r.latency_s for r in everything) < HANG_S
    in_flight = [r for r in everything if r.ok and r.start_s < signal_s < r.end_s]
    assert in_flight, "no request was in flight at the signal: the test proved nothing"
    assert all(r.ok for r in everything if r.end_s < signal_s), "a request failed before the signal"
    assert any(not r.ok for r in http_records) and any(not r.ok for r in grpc_records), "nothing was refused"


def test_short_soak_keeps_memory_descriptors_and_spool_flat(tiny_store: Path, tmp_path: Path) -> None:
    """240 requests, a third malformed, workers recycled every 10 decodes (bench/soak.py: 10,000)."""
    spool = tmp_path / "spool"
    valid, malformed = make_mix(tmp_path / "videos")
    proc = ServerProcess(
        tiny_store, spool_dir=spool, decode_max_jobs=10, decode_timeout_s=10, max_batch_clips=4, engine="auto"
    )  # the default engine soaks too
    workers: set[int] = set()
    try:
        records, snaps = asyncio.run(
            soak(proc.url, proc.proc.pid, spool, valid, malformed, requests=240, concurrency=4, checkpoints=6)
        )
        workers.update(decode_workers(proc.proc.pid))
    finally:
        assert proc.stop() == 0, proc.output()
    # A short run is noisier than the full soak: 10 % here, 5 % in bench/soak.py.
    report = judge(records, snaps, {m.name for m in malformed}, max_growth=0.10)
    assert report["passed"], {k: v for k, v in report.items() if k != "snapshots"}
    assert len(snaps) == 6 and len(records) == 240
    assert max(r.latency_s for r in records) < HANG_S
    assert not any(spool.iterdir()), "a spooled upload outlived the server"
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a decode worker outlived the server"


def answers_probes(srv: InProcessServer) -> bool:
    """The in-process server is alive: /healthz and /readyz answer 200, in the app and on its port."""
    try:
        local = [srv.http.get(route).status_code for route in ("/healthz", "/readyz")]
        remote = [httpx.get(f"{srv.url}{route}", timeout=10).status_code for route in ("/healthz", "/readyz")]
    except httpx.HTTPError:
        return False
    return local == remote == [200, 200]


def test_fuzzed_uploads_never_crash_hang_or_5xx(tiny_store: Path, tmp_path: Path) -> None:
    """80 seeded mutations (flips, cuts, duplications, header damage, splices) of real clips. Decoders
    run in worker processes: a crash there must leave the server (in this process) answering."""
    seeds = [Video(p.name, p.read_bytes()) for p in make_seeds(tmp_path / "seeds")]
    batch = cases(seeds, 80, seed=1)
    with InProcessServer(tiny_store, http_port=True, decode_timeout_s=5, spool_dir=tmp_path / "spool") as srv:
        results = asyncio.run(send_cases(srv.url, batch, concurrency=2, timeout_s=HANG_S + 30))
        alive = answers_probes(srv)
    # leaving the block drained and stopped the server (an error there fails the test)
    report = verdict(results, hang_s=5 + 30, alive=alive)
    assert report["passed"], report
    assert report["status_counts"].get("422"), "no mutation was refused as undecodable: the fuzzer is too gentle"
    assert not any((tmp_path / "spool").iterdir())


def test_requests_still_in_flight_when_the_drain_budget_ends_get_an_explicit_503(
    tiny_store: Path, busy_clip: Video
) -> None:
    """Batches that wait 20 s keep every request in flight past a 1 s drain budget: each must end
    as 503 ``draining`` (gRPC UNAVAILABLE), never as a 500 or a dropped connection."""
    proc = ServerProcess(tiny_store, drain_timeout_s=1, max_batch_clips=8, max_delay_ms=20_000)  # 6 clips: never full

    async def scenario() -> tuple[list[Record], list[Record]]:
        http = HttpTarget(proc.url, 4, timeout_s=HANG_S)
        rpc = GrpcTarget(f"127.0.0.1:{proc.grpc_port}", timeout_s=HANG_S)

        async def signal_soon() -> None:
            await asyncio.sleep(1.5)  # every request admitted and waiting in the batcher
            proc.terminate()

        try:
            (http_records, _), (grpc_records, _), _ = await asyncio.gather(
                closed_loop(http, [busy_clip], 4, 4, HANG_S),
                closed_loop(rpc, [busy_clip], 2, 2, HANG_S),
                signal_soon(),
            )
        finally:
            await http.close()
            await rpc.close()
        return http_records, grpc_records

    try:
        http_records, grpc_records = asyncio.run(scenario())
        exit_code = proc.proc.wait(timeout=30)
    finally:
        code = proc.stop()
    assert exit_code == 0 and code == 0, proc.output()
    assert [(r.status, r.code) for r in http_records] == [("503", "draining")] * 4
    assert [(r.status, r.code) for r in grpc_records] == [("UNAVAILABLE", "draining")] * 2
