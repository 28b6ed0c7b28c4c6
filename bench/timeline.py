"""Timelines and the result cache: what a long video's timeline costs, and what a cache hit saves.

    python bench/timeline.py                          # ~3 min on 2 cores
    python bench/timeline.py --quick                  # a smoke run
    python bench/timeline.py --results bench/RESULTS.md

A server process (``python -m service``, as shipped: the bundled default model, engine auto) and
clients in this process over HTTP.

1. **Timeline against one request per window.** A 60 s video (320×240, 15 fps, H.264: actions of the
   synthetic-motion task one after another, 6 s each). ``timeline=true`` with the defaults (4 s
   windows every 2 s: 29 windows) against the same 29 windows cut beforehand into 29 files and sent
   as 29 requests, one after another and all at once (the server batches them). Rounds alternate;
   the medians are reported, with the agreement of the windows' top-1 between the two.
2. **A cache hit.** One 4 s video, the same upload repeatedly: the first request (decoded, scored)
   against the repeats (answered from the in-process cache, then from Redis in a second server
   process that shares it) and against ``Cache-Control: no-cache``, p50 and p90 of the client's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.process import RedisProcess, ServerProcess  # noqa: E402
from service.core.resources import bundled_store  # noqa: E402
from training import synthetic  # noqa: E402

MODEL = "tsm_mobilenetv2_synthetic_motion"
MP4 = {"Content-Type": "video/mp4"}
ACTIONS = ["moving left to right", "growing", "rotating clockwise", "moving up", "fading out", "shrinking",
           "moving right to left", "fading in", "rotating counterclockwise", "moving down"]  # fmt: skip


def encode(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "20"})
        assert isinstance(stream, av.VideoStream)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def long_video(seconds_each: float, fps: int, size: tuple[int, int]) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    for i, label in enumerate(ACTIONS):
        spec = synthetic.example_spec(label, 0, seed=i)
        spec = synthetic.replace(spec, width=size[0], height=size[1], fps=fps, frames=round(seconds_each * fps))
        frames += [img for img, _ in synthetic.render(spec)]
    return frames


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def timeline_vs_windows(url: str, video: Path, cuts: list[Path], rounds: int) -> dict[str, object]:
    data, pieces = video.read_bytes(), [c.read_bytes() for c in cuts]
    times: dict[str, list[float]] = {"timeline": [], "sequential": [], "concurrent": []}
    agree = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one(body: bytes) -> dict[str, object]:
            r = await client.post("/classify", params={"top_k": 1}, content=body, headers=MP4)
            r.raise_for_status()
            return dict(r.json())

        for _ in range(rounds):  # alternating, so drift hits every form alike
            t0 = time.perf_counter()
            r = await client.post("/classify", params={"timeline": "true", "top_k": 1}, content=data, headers=MP4)
            r.raise_for_status()
            times["timeline"].append(time.perf_counter() - t0)
            windows = r.json()["timeline"]["windows"]
            t0 = time.perf_counter()
            sequential = [await one(p) for p in pieces]
            times["sequential"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await asyncio.gather(*(one(p) for p in pieces))
            times["concurrent"].append(time.perf_counter() - t0)
            agree.append(np.mean([w["predictions"][0]["label"] == s["predictions"][0]["label"]  # type: ignore[index]
                                  for w, s in zip(windows, sequential, strict=True)]))  # fmt: skip
    return {
        "windows": len(pieces),
        **{k: statistics.median(v) for k, v in times.items()},
        "agree": float(np.mean(agree)),
    }


def cache_latency(urls: list[str], body: bytes, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"first (miss)": [], "hit (in process)": [], "hit (Redis, other replica)": [],
                                   "no-cache": []}  # fmt: skip
    clients = {url: httpx.Client(base_url=url, timeout=60) for url in urls}  # kept alive, as a real client
    for i in range(repeats):
        unique = body + i.to_bytes(4, "little")  # a new upload each round: its first request misses
        for name, url, headers in [("first (miss)", urls[0], MP4), ("hit (in process)", urls[0], MP4),
                                   ("hit (Redis, other replica)", urls[1], MP4),
                                   ("no-cache", urls[0], {**MP4, "Cache-Control": "no-cache"})]:  # fmt: skip
            t0 = time.perf_counter()
            r = clients[url].post("/classify", content=unique, headers=headers)
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            expected = "miss" if name in ("first (miss)", "no-cache") else "hit"
            assert r.headers["X-Cache"] == expected, (name, r.headers.get("X-Cache"))
            out[name].append(elapsed)
    for client in clients.values():
        client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test of the bench itself")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20, help="uploads of the cache bench")
    p.add_argument("--results", type=Path, help="append the tables to this Markdown file")
    args = p.parse_args(argv)
    rounds, repeats = (1, 3) if args.quick else (args.rounds, args.repeats)
    seconds_each = 2.0 if args.quick else 6.0
    fps, size = 15, (320, 240)
    store = bundled_store()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = long_video(seconds_each, fps, size)
        video = encode(work / "long.mp4", frames, fps)
        duration = len(frames) / fps
        window, stride = 4.0, 2.0
        count = int((duration - window) // stride) + 1
        cuts = [encode(work / f"w{i}.mp4", frames[round(i * stride * fps) : round((i * stride + window) * fps)], fps)
                for i in range(count)]  # fmt: skip
        print(f"video: {duration:.0f} s, {len(frames)} frames, {video.stat().st_size / 1e6:.1f} MB; {count} windows")

        server = ServerProcess(store, default_model=MODEL, models=f'["{MODEL}"]', engine="auto", cache_entries=0)
        try:
            t = asyncio.run(timeline_vs_windows(server.url, video, cuts, rounds))
        finally:
            server.stop()

        with RedisProcess(work) as redis:
            servers = [ServerProcess(store, default_model=MODEL, models=f'["{MODEL}"]', engine="auto",
                                     cache_entries=1024, cache_url=redis.url) for _ in range(2)]  # fmt: skip
            try:
                c = cache_latency([s.url for s in servers], cuts[0].read_bytes(), repeats)
            finally:
                for s in servers:
                    s.stop()

    load = os.getloadavg()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")  # fmt: skip
    lines = [
        f"## Timelines and the result cache (bench/timeline.py, {dt.date.today()})",
        "",
        f"{cpu}, {os.cpu_count()} cores, load average {load:.2f} at the end; the server as shipped (bundled "
        f"default model, engine auto), clients over HTTP on loopback; {rounds} rounds alternating, medians.",
        "",
        f"**A {duration:.0f} s video's timeline** (320×240, 15 fps, {count} windows of 4 s every 2 s) against "
        "its windows cut beforehand into files, one request each (cache off):",
        "",
        "| form | wall time | per window | vs timeline |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in [("timeline", "one timeline request"), ("sequential", f"{count} requests, one after another"),
                        ("concurrent", f"{count} requests at once")]:  # fmt: skip
        s = float(t[name])  # type: ignore[arg-type]
        lines.append(f"| {label} | {s:.2f} s | {s / count * 1000:.0f} ms | {s / float(t['timeline']):.2f}× |")  # type: ignore[arg-type]
    lines += ["", f"Windows whose top-1 agrees between the timeline and the cut files: {float(t['agree']):.0%} "  # type: ignore[arg-type]
              "(cut files are re-encoded and each window decoded from its own keyframes: small differences).", "",
              f"**A cache hit** (one 4 s 320×240 upload, {repeats} uploads, each sent four ways):", "",
              "| request | p50 | p90 |", "| --- | --- | --- |"]  # fmt: skip
    for name, values in c.items():
        lines.append(f"| {name} | {pct(values, 50) * 1000:.1f} ms | {pct(values, 90) * 1000:.1f} ms |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
