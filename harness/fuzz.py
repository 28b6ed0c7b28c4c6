"""Fuzzing through a server: seed videos, seeded mutations (case ``i`` of seed ``s`` is always the
same bytes), sending them over HTTP, and the verdict (no crash, no hang, no 5xx). ``bench/fuzz.py``
is its command line; tests run a bounded number of cases."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.load import HttpTarget, Record, Video
from harness.media import Pattern, make_video
from harness.process import ROOT

ALLOWED = frozenset({"200", "400", "413", "415", "422"})
HANG_MARGIN_S = 30.0  # beyond the decode timeout: upload, queueing and a slow shared machine


# ----------------------------------------------------------------------------------- mutator
def _span(rng: random.Random, n: int, most: int) -> tuple[int, int]:
    length = rng.randint(1, max(1, min(most, n)))
    start = rng.randrange(0, max(1, n - length + 1))
    return start, start + length


def mutate(data: bytes, rng: random.Random, others: list[bytes] | None = None) -> tuple[bytes, list[str]]:
    """1-4 mutations of ``data``; returns the bytes and what was done (for the report)."""
    buf = bytearray(data)
    done: list[str] = []
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        if n == 0:
            break
        op = rng.choice(["flip", "flip", "cut", "dup", "fill", "header", "truncate", "splice"])
        if op == "flip":  # a few random bits anywhere
            count = rng.randint(1, 32)
            for _ in range(count):
                buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
            done.append(f"flip {count} bits")
        elif op == "cut":
            a, b = _span(rng, n, max(1, n // 4))
            del buf[a:b]
            done.append(f"cut [{a}:{b}]")
        elif op == "dup":  # a chunk copied somewhere else: repeated boxes, frames, headers
            a, b = _span(rng, n, max(1, n // 4))
            at = rng.randrange(n + 1)
            buf[at:at] = buf[a:b]
            done.append(f"dup [{a}:{b}] at {at}")
        elif op == "fill":
            a, b = _span(rng, n, max(1, n // 8))
            byte = rng.choice([0x00, 0xFF, None])
            buf[a:b] = bytes([byte]) * (b - a) if byte is not None else rng.randbytes(b - a)
            done.append(f"fill [{a}:{b}] with {'random' if byte is None else hex(byte)}")
        elif op == "header":  # container headers hold sizes and counts: the interesting part
            head = min(n, 1024)
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(head)
                buf[at] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            done.append("header bytes")
        elif op == "truncate":
            keep = rng.randint(1, n)
            del buf[keep:]
            done.append(f"truncate to {keep}")
        elif op == "splice" and others:
            other = rng.choice(others)
            a, b = _span(rng, len(other), max(1, len(other) // 4))
            at = rng.randrange(n + 1)
            buf[at:at] = other[a:b]
            done.append(f"splice {b - a} bytes of another seed at {at}")
    return bytes(buf), done


def radamsa(data: bytes, seed: int) -> bytes | None:
    """One radamsa mutation, if the tool is installed."""
    exe = shutil.which("radamsa")
    if exe is None:
        return None
    done = subprocess.run([exe, "-s", str(seed)], input=data, capture_output=True, timeout=30, check=False)
    return done.stdout


# ----------------------------------------------------------------------------------- seeds
def make_seeds(directory: Path) -> list[Path]:
    """Small real clips: several containers and codecs, so each demuxer and decoder is fuzzed."""
    directory.mkdir(parents=True, exist_ok=True)
    kinds: list[tuple[str, str, Pattern]] = [
        ("h264", "mp4", "corner"),
        ("vp8", "webm", "index"),
        ("mpeg4", "avi", "corner"),
        ("h264", "mkv", "index"),
        ("mjpeg", "mov", "corner"),
    ]
    seeds = [
        make_video(directory / f"seed_{codec}.{ext}", codec=codec, container=ext, width=96, height=64, frames=24,
                   pattern=pattern)
        for codec, ext, pattern in kinds
    ]  # fmt: skip
    samples = ROOT / "tests" / "data" / "videos"
    seeds += [
        p for p in sorted(samples.glob("*")) if p.suffix not in (".md", ".json", ".sh") and p.stat().st_size < 1 << 20
    ]
    return seeds


@dataclass
class Case:
    index: int
    seed_file: str
    mutations: list[str]
    data: bytes


def cases(seeds: list[Video], count: int, seed: int, use_radamsa: bool = False, only: int | None = None) -> list[Case]:
    others = [v.data for v in seeds]
    out = []
    for i in range(count):
        if only is not None and i != only:
            continue
        rng = random.Random(f"{seed}:{i}")
        base = rng.choice(seeds)
        data, done = mutate(base.data, rng, others)
        if use_radamsa and rng.random() < 0.5 and (mutated := radamsa(base.data, rng.randrange(1 << 31))) is not None:
            data, done = mutated, ["radamsa"]
        out.append(Case(i, base.name, done, data))
    return out


async def send_cases(url: str, batch: list[Case], concurrency: int, timeout_s: float) -> list[tuple[Case, Record]]:
    """Every case once, ``concurrency`` at a time; a client timeout is recorded as ``timeout`` (a hang)."""
    target = HttpTarget(url, concurrency, timeout_s=timeout_s, params={"top_k": 1})
    results: list[tuple[Case, Record]] = []
    queue = list(reversed(batch))
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def worker() -> None:
        while queue:
            case = queue.pop()
            results.append((case, await target.send(Video(f"case{case.index}.bin", case.data), t0)))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await target.close()
    return sorted(results, key=lambda r: r[0].index)


def verdict(results: list[tuple[Case, Record]], hang_s: float, alive: bool) -> dict[str, Any]:
    bad = [
        {"case": c.index, "seed": c.seed_file, "mutations": c.mutations, "status": r.status, "code": r.code,
         "latency_s": round(r.latency_s, 2)}
        for c, r in results if r.status not in ALLOWED or r.latency_s > hang_s
    ]  # fmt: skip
    return {
        "cases": len(results),
        "status_counts": dict(Counter(r.status for _, r in results)),
        "error_codes": dict(Counter(r.code for _, r in results if r.code)),
        "max_latency_s": round(max((r.latency_s for _, r in results), default=0.0), 2),
        "server_alive": alive,
        "failures": bad,
        "passed": alive and not bad,
    }


def server_alive(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return False
    try:
        return httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False
