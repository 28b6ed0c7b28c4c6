"""P1 of ``bench/gpu.sh``: NVDEC against CPU decoding, through the server's own ``decode_file``.

    python -m bench.gpu_nvdec --out DIR            # on the GPU machine (~60 s)
    python -m bench.gpu_nvdec --out DIR --quick    # the dry run: one short clip, 1 and 2 processes

For each generated H.264 clip (``bench.decode.make_clip``: 320×240 10 s, the end-to-end clip, first;
then 1280×720 5 s and 640×360 10 s), 8 TSN-sampled frames at scale 256 / crop 224, as a ResNet-50
8×224² request asks:

1. **Frames**: ``decoder="pyav"`` against ``decoder="nvdec"``: the largest absolute pixel difference
   and the share of equal pixels, and which decoder really decoded (``facts.decoder``). NVDEC falls
   back to PyAV per file where it cannot serve; the reason is reported as "NVDEC not used: ...", and
   no NVDEC throughput is measured for that clip (a fallback's numbers are PyAV's).
2. **Throughput**: N decoder processes (1, 7, 14; one decoder thread each, as the server's decode
   workers), each decoding the clip in a loop for ``--point-s``: videos/s over all of them, and CPU ms
   per video (user + system of the decoder processes, the CUDA driver's threads included).

Results go to ``DIR/p1_nvdec.json`` and ``DIR/p1_nvdec.md``, rewritten after each measurement: a run
cut short (SIGINT) keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.decode import SPEC, cached_clip, parse_clips  # noqa: E402

CLIPS = "320x240x10,1280x720x5,640x360x10"  # in order of value: the end-to-end clip first
NO_OPTION = "this checkout's service.video.decode.decode_file has no decoder option"


def decode(path: str, decoder: str) -> tuple[np.ndarray, str, str]:
    """Frames, the decoder that decoded them, and why it is not ``decoder`` ("" when it is)."""
    from service.video.decode import decode_file
    from service.video.probe import DecodeLimits
    from service.video.sampling import SamplingSpec

    limits = DecodeLimits(
        max_frame_pixels=4096 * 2304, max_frame_side=8192, max_duration_s=3600.0, timeout_s=60.0, memory_mb=4096,
        max_jobs=1000,
    )  # fmt: skip
    spec = SamplingSpec(**SPEC)  # type: ignore[arg-type]
    if "decoder" not in inspect.signature(decode_file).parameters:
        video = decode_file(path, spec, limits, 1)
        return video.frames, "pyav", "" if decoder == "pyav" else NO_OPTION
    choice: dict[str, Any] = {"decoder": decoder}  # a str: the benches name decoders the service may not know
    video = decode_file(path, spec, limits, 1, **choice)
    facts = video.facts
    why = getattr(facts, "fallback", "") or getattr(facts, "decoder_fallback", "")
    return video.frames, str(getattr(facts, "decoder", decoder)), str(why)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process: FFmpeg's and CUDA's
    return usage.ru_utime + usage.ru_stime


def worker(conn: Connection) -> None:
    """A decoder process: ``(path, decoder, start_at, end_at)`` -> decodes in a loop between the two
    monotonic times (start_at None: one decode, a warm-up); None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it, after saving what it measured
    while (job := conn.recv()) is not None:
        path, decoder, start_at, end_at = job
        try:
            if start_at is None:
                _, used, why = decode(path, decoder)
                conn.send({"used": used, "why": why})
                continue
            time.sleep(max(0.0, start_at - time.monotonic()))
            n, other, used_cpu = 0, 0, cpu_s()
            while time.monotonic() < end_at:
                other += decode(path, decoder)[1] != decoder
                n += 1
            conn.send({"n": n, "fallbacks": other, "cpu_s": cpu_s() - used_cpu, "end": time.monotonic()})
        except Exception as e:  # reported by the parent as this point's error
            conn.send({"error": f"{type(e).__name__}: {e}"[:300]})


class Pool:
    """``size`` decoder processes (spawned: a forked CUDA context is unusable)."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def ask(self, count: int, job: tuple[Any, ...]) -> list[dict[str, Any]]:
        for conn in self.conns[:count]:
            conn.send(job)
        return [conn.recv() for conn in self.conns[:count]]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):  # a process that died already
                conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()


def point(pool: Pool, n: int, path: str, decoder: str, seconds: float) -> dict[str, Any]:
    start = time.monotonic() + 0.2  # every process starts together
    answers = pool.ask(n, (path, decoder, start, start + seconds))
    errors = [a["error"] for a in answers if "error" in a]
    if errors:
        return {"error": errors[0]}
    videos = sum(a["n"] for a in answers)
    wall = max(a["end"] for a in answers) - start
    cpu = sum(a["cpu_s"] for a in answers)
    return {
        "videos_per_s": round(videos / wall, 1), "cpu_ms_per_video": round(1000 * cpu / max(videos, 1), 1),
        "videos": videos, "fallbacks": sum(a["fallbacks"] for a in answers),
    }  # fmt: skip


def card() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "no NVIDIA GPU (nvidia-smi not found)"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "no NVIDIA GPU"


def markdown(r: dict[str, Any]) -> str:
    fallbacks = sorted({c["why"] for c in r["frames"] if c["decoded_by"] != "nvdec"})
    if not r["frames"]:
        verdict = "No clip decoded yet."
    elif fallbacks:
        verdict = f"**NVDEC not used: {'; '.join(fallbacks)}** (PyAV decoded instead; no NVDEC rows below)."
    else:
        verdict = "NVDEC decoded every clip."
    lines = [
        f"### NVDEC against CPU decoding (`bench/gpu_nvdec.py`), {r['date']}, {r['card']}, {r['cores']} cores",
        "",
        f"{verdict} 8 TSN-sampled frames per video (scale 256, crop 224) through the server's `decode_file`, "
        "one decoder thread per process; videos/s over all processes, each looping on the clip for "
        f"{r['point_s']:g} s; CPU ms = user + system of the decoder processes per video."
        + (" **Cut short by a time limit.**" if r.get("interrupted") else ""),
        "",
        "| clip | decoded by (asked: nvdec) | max abs Δ vs PyAV | equal pixels |",
        "| --- | --- | ---: | ---: |",
        *[f"| {c['clip']} | {c['decoded_by']} | {c.get('max_abs_diff', '-')} | {c.get('equal_fraction', '-')} |"
          for c in r["frames"]],
        "",
        "| clip | decoder | processes | videos/s | CPU ms / video | fell back |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for p in r["points"]:
        if "error" in p or "skipped" in p:
            why = p.get("error", p.get("skipped"))
            lines.append(f"| {p['clip']} | {p['decoder']} | {p['processes']} | {why} | | |")
        else:
            lines.append(f"| {p['clip']} | {p['decoder']} | {p['processes']} | {p['videos_per_s']:,.1f} | "
                         f"{p['cpu_ms_per_video']:,.1f} | {p['fallbacks']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for p1_nvdec.json and p1_nvdec.md")
    p.add_argument("--quick", action="store_true", help="a 2 s 320×240 clip, 1 and 2 processes (the dry run)")
    p.add_argument("--clips", default=CLIPS, help="comma-separated WxHxS clips, in the order measured")
    p.add_argument("--processes", default="1,7,14", help="decoder processes per point")
    p.add_argument("--point-s", type=float, default=2.0, help="seconds each point decodes")
    p.add_argument("--budget-s", type=float, default=65.0, help="no new point after this long")
    p.add_argument("--video-dir", type=Path, default=Path(tempfile.gettempdir()) / "tsm-bench-videos")
    a = p.parse_args(argv)
    if a.quick:
        a.clips, a.processes, a.point_s = "320x240x2", "1,2", 0.3
    deadline = time.monotonic() + a.budget_s
    counts = [int(n) for n in a.processes.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "card": card(), "cores": len(os.sched_getaffinity(0)),
        "point_s": a.point_s, "frames": [], "points": [],
    }  # fmt: skip

    def save() -> None:
        (a.out / "p1_nvdec.json").write_text(json.dumps(r, indent=2) + "\n")
        (a.out / "p1_nvdec.md").write_text(markdown(r))

    pool: Pool | None = None
    try:
        clips = {f"{w}×{h} {s} s": str(cached_clip(a.video_dir, w, h, s)) for w, h, s in parse_clips(a.clips)}
        timed: list[tuple[str, str]] = []  # (clip, decoder) pairs with throughput points
        for name, path in clips.items():
            cpu, _, _ = decode(path, "pyav")
            gpu, used, why = decode(path, "nvdec")
            row: dict[str, Any] = {"clip": name, "decoded_by": used, "why": why}
            if used == "nvdec":
                diff = np.abs(cpu.astype(np.int16) - gpu.astype(np.int16))
                row.update(max_abs_diff=int(diff.max()), equal_fraction=round(float((diff == 0).mean()), 6))
            else:
                row["decoded_by"] = f"{used} (NVDEC not used: {why})"
                print(f"{name}: NVDEC not used: {why}", flush=True)
            r["frames"].append(row)
            timed += [(name, "pyav")] + ([(name, "nvdec")] if used == "nvdec" else [])
            save()
        pool = Pool(max(counts))
        for name, decoder in timed:  # the first decode in each process opens its decoder (and CUDA context)
            pool.ask(max(counts), (clips[name], decoder, None, None))
        for name, decoder in timed:
            for n in counts:
                base = {"clip": name, "decoder": decoder, "processes": n}
                if time.monotonic() + a.point_s > deadline:
                    r["points"].append({**base, "skipped": "skipped (time budget)"})
                    continue
                r["points"].append({**base, **point(pool, n, clips[name], decoder, a.point_s)})
                print(r["points"][-1], flush=True)
                save()
    except KeyboardInterrupt:  # gpu.sh's timeout: keep what was measured
        r["interrupted"] = True
    finally:
        if pool is not None:
            pool.close()
    save()
    print(markdown(r), flush=True)
    if r.get("interrupted"):
        return 130
    return 1 if any("error" in point for point in r["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())
