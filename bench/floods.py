"""Floods against the real server process (issue #43): slow connections on either port, huge header
lines, whole-video unary gRPC calls.

    .venv/bin/python -m bench.floods [--connections 30000] [--results bench/RESULTS.md]

One server (the bundled default model, as shipped: its own open-file limit raised, the caps derived
from it). For each port, ``--connections`` connections are opened by ``--processes`` client processes
(a client process has an open-file limit too) and held: HTTP ones send half a request line and
headers and wait, gRPC ones never send the HTTP/2 preface. Meanwhile ``/healthz`` and one ``/classify``
are timed every 2 s. Reported: the slowest ``/healthz`` and ``/classify`` during the flood, the share
of the flood the server closed within 20 s, the server's log lines during the flood, and its open
files at the end. Then 8 connections each send a 16 MiB header line (resident memory before and
after), and 12 concurrent unary ``Classify`` calls of 61 MiB (memory before and the peak during).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import platform
import selectors
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import httpx  # noqa: E402

from bench.decode import make_clip  # noqa: E402
from harness.load import fd_count, load_average, rss_mb  # noqa: E402
from harness.process import ServerProcess  # noqa: E402
from service.api.pb.tsm.v1 import classifier_pb2 as pb  # noqa: E402
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402

HOLD_S = 20.0  # how long the flood holds its connections


def flood_worker(host: str, port: int, count: int, http: bool, out: Any) -> None:
    """Opens ``count`` connections, sends half a request (HTTP) or nothing (gRPC), then counts how
    many the server closes within HOLD_S; puts (opened, closed) on ``out``."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    opened = 0
    for _ in range(count):
        try:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, port))
            selector.register(sock, selectors.EVENT_READ)
            opened += 1
        except OSError:
            break
    time.sleep(0.5)
    if http:
        for key in list(selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.send(b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ")  # type: ignore[union-attr]
    closed, end = 0, time.monotonic() + HOLD_S
    while time.monotonic() < end and selector.get_map():
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            try:
                data = sock.recv(65536)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:
                closed += 1
                selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
    out.put((opened, closed))


def timed(call: Any) -> float:
    start = time.monotonic()
    try:
        call()
    except Exception:
        return float("inf")
    return time.monotonic() - start


def flood(server: ServerProcess, video: bytes, connections: int, processes: int, http: bool) -> dict[str, Any]:
    lines_before = len(server.output().splitlines())
    out: Any = mp.Queue()
    port = server.http_port if http else server.grpc_port
    workers = [mp.Process(target=flood_worker, args=("127.0.0.1", port, connections // processes, http, out))
               for _ in range(processes)]  # fmt: skip
    for w in workers:
        w.start()
    healthz, classify = [], []
    end = time.monotonic() + HOLD_S

    def classify_once(client: httpx.Client) -> None:
        client.post(f"{server.url}/classify", content=video, headers={"Content-Type": "video/mp4"}).raise_for_status()

    time.sleep(2.0)
    with httpx.Client(timeout=15) as client:
        while time.monotonic() < end:
            healthz.append(timed(lambda: client.get(f"{server.url}/healthz").raise_for_status()))
            classify.append(timed(lambda: classify_once(client)))
            time.sleep(1.0)
    results = [out.get(timeout=HOLD_S + 30) for _ in workers]
    for w in workers:
        w.join()
    opened, closed = sum(r[0] for r in results), sum(r[1] for r in results)
    return {
        "port": "HTTP" if http else "gRPC", "opened": opened, "closed_share": closed / max(opened, 1),
        "healthz_max_s": max(healthz), "classify_max_s": max(classify),
        "log_lines": len(server.output().splitlines()) - lines_before, "server_files": fd_count(server.proc.pid),
    }  # fmt: skip


def huge_headers(server: ServerProcess) -> tuple[float, float, list[bytes]]:
    before = rss_mb(server.proc.pid)
    answers = []
    for _ in range(8):
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(256):  # 16 MiB, unless the server closes first
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        try:
            answers.append(sock.recv(64)[:12])
        except OSError:
            answers.append(b"")
        sock.close()
    return before, rss_mb(server.proc.pid), answers


def unary_uploads(server: ServerProcess) -> tuple[float, float, dict[str, int]]:
    """12 concurrent Classify calls carrying 61 MiB each: resident memory before and the peak."""
    data = os.urandom(61 * 1024 * 1024)
    before, peak, stop = rss_mb(server.proc.pid), 0.0, threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(server.proc.pid))
            time.sleep(0.05)

    options = [("grpc.max_send_message_length", 128 * 1024 * 1024)]
    codes: dict[str, int] = {}
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=options) as channel:
        stub = pb_grpc.VideoClassifierStub(channel)

        def call(_: int) -> str:
            try:
                stub.Classify(pb.ClassifyRequest(video=data), timeout=120)
                return "OK"
            except grpc.RpcError as e:
                return str(e.code().name)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(12) as pool:
            for code in pool.map(call, range(12)):
                codes[code] = codes.get(code, 0) + 1
        stop.set()
        watcher.join()
    return before, peak, codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=30_000)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--results", type=Path)
    args = p.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_clip(Path(tmp) / "clip.mp4", 320, 240, 10).read_bytes()
        server = ServerProcess(None, engine="auto", cpu_budget=0, decode_workers=0, log_level="INFO")
        try:
            floods = [flood(server, video, args.connections, args.processes, http) for http in (True, False)]
            header_before, header_after, header_answers = huge_headers(server)
            unary_before, unary_peak, unary_codes = unary_uploads(server)
        finally:
            server.stop()
    rows = [f"| {f['port']} | {f['opened']} | {f['healthz_max_s']:.2f} | {f['classify_max_s']:.2f} | "
            f"{f['closed_share']:.0%} | {f['log_lines']} | {f['server_files']} |" for f in floods]  # fmt: skip
    lines = [
        f"## Floods (`bench/floods.py --connections {args.connections}`), {dt.date.today().isoformat()}",
        "",
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores; the bundled default model; load average "
        f"{load_before} before, {load_average()} after. Each flood holds its connections {HOLD_S:g} s "
        f"({args.processes} client processes); goals: /healthz < 1 s, /classify < 3 s, ≥ 90% closed, < 1,000 "
        "log lines.",
        "",
        "| port flooded | connections opened | slowest /healthz s | slowest /classify s | closed by the server "
        "in 20 s | server log lines | server open files after |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- 8 connections sending 16 MiB header lines: answered {sorted(set(header_answers))}; server resident "
        f"memory {header_before:.0f} → {header_after:.0f} MB.",
        f"- 12 concurrent unary `Classify` calls of 61 MiB: {unary_codes}; resident memory {unary_before:.0f} MB "
        f"before, {unary_peak:.0f} MB at the peak (+{unary_peak - unary_before:.0f} MB; goal < 400).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
