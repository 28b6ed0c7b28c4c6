"""Decode cost per video: our sparse decoder against the decoders it replaced and the physical minimum.

    .venv/bin/python bench/decode.py [--repeat 5] [--results bench/RESULTS.md]

The clip mix of bench/e2e.py (H.264 by x264 "veryfast": B-frames, a keyframe every 2 s; moving shapes
over a panning texture) is encoded once; each method then runs in a fresh process (so its peak RSS is
its own) on 8 TSN-sampled frames resized to 256 and centre-cropped to 224. Reported: wall ms and CPU
ms (user + system: core·s) per video, best of ``--repeat``, and frames decoded.

Methods:
- ours:       service.video.decode.decode_file (PyAV: from the keyframe before each sampled frame, packets
              between GOPs never decoded, frames nothing refers to skipped; resized while converting)
- sequential: PyAV, every frame up to the last sampled one (exact decoding, the tests' reference)
- decord:     the decoder we served with before: decord get_batch of the sampled frames, resized at decode
- full-res:   what other servers do: decord get_batch at full resolution, then resize each frame
- ours-kf:    decode_file with sampling="keyframes" (approximate: the nearest keyframes)
- ours-decord: decode_file with decoder="decord" (TSM_DECODER=decord: full-res like "full-res", then
              swscale bilinear; what teams with mmaction2-trained models serve with)

Frames: "minimum" counts, in the decode runs the sampled frames need, the I and P frames (references
in any H.264 stream) plus the sampled frames: a lower bound for exact decoding (x264's B-pyramid also
makes some B-frames references). "ours" counts the frames FFmpeg decoded; decord decodes every frame
of its runs (keyframe to sampled frame).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = {"num_segments": 8, "scale_size": 256, "input_size": 224}
METHODS = ["ours", "sequential", "decord", "full-res", "ours-kf", "ours-decord"]
CLIPS = ((320, 240, 10), (640, 360, 10), (1280, 720, 5))  # width, height, seconds: the issue #19 mix


def make_clip(path: Path, width: int, height: int, seconds: int, fps: int = 25) -> Path:
    """Moving shapes over a textured background: compresses like camera footage, not like noise."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"preset": "veryfast", "g": str(2 * fps)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            img = np.roll(texture, i * 2, axis=1).copy()
            cx, cy = (i * 7) % width, height // 2 + int(height / 3 * np.sin(i / 10))
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (height // 6) ** 2
            img[disc] = (200, 80 + i % 100, 40)
            img[:, :, 2] = np.clip(img[:, :, 2].astype(int) + (xx * 100 // width), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def cached_clip(directory: Path, width: int, height: int, seconds: int) -> Path:
    """``make_clip`` once per size in ``directory`` (encoding 720p takes a while on 2 cores); the benches
    that share a directory share the clips."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shapes_{width}x{height}_{seconds}s.mp4"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.part.mp4")  # two benches at once never share a half-written file
        make_clip(tmp, width, height, seconds)
        tmp.rename(path)
    return path


def parse_clips(text: str) -> list[tuple[int, int, int]]:
    """``320x240x10,1280x720x5``: width x height x seconds of each clip."""
    clips = []
    for item in text.split(","):
        w, h, seconds = (int(x) for x in item.lower().split("x"))
        clips.append((w, h, seconds))
    return clips


def run_one(method: str, path: str, repeat: int) -> dict[str, float]:
    """Runs in a fresh process: one warm-up, then ``repeat`` timed decodes."""
    import numpy as np

    from service.video.decode import decode_file
    from service.video.probe import DecodeLimits
    from service.video.sampling import SamplingSpec, assemble, sample_indices, scaled_size

    limits = DecodeLimits(4096 * 2304, 8192, 3600.0, 60.0, 4096, 1000)
    spec = SamplingSpec(**SPEC)  # type: ignore[arg-type]

    def with_decord(full_resolution: bool) -> np.ndarray:
        import decord

        probe = decord.VideoReader(path, num_threads=1)
        height, width = probe[0].shape[:2]
        w, h = scaled_size(width, height, spec.scale_size)
        reader = probe if full_resolution else decord.VideoReader(path, width=w, height=h, num_threads=1)
        order = sample_indices(len(reader), spec.num_segments)[0]
        batch = reader.get_batch(order).asnumpy()
        if full_resolution:
            import av

            batch = np.stack([
                av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=w, height=h).to_ndarray() for f in batch
            ])  # fmt: skip
        return assemble(batch, order, [order], spec)

    def sequential() -> np.ndarray:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            n = stream.frames
            w, h = scaled_size(stream.codec_context.width, stream.codec_context.height, spec.scale_size)
            order = sample_indices(n, spec.num_segments)[0]
            got = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in order:
                    got[i] = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="BILINEAR")
                if i >= order[-1]:
                    break
        return assemble(np.stack([got[i] for i in order]), order, [order], spec)

    def run() -> object:
        if method == "ours":
            return decode_file(path, spec, limits)
        if method == "ours-kf":
            return decode_file(path, SamplingSpec(**SPEC, sampling="keyframes"), limits)  # type: ignore[arg-type]
        if method == "ours-decord":
            return decode_file(path, spec, limits, decoder="decord")
        if method == "sequential":
            return sequential()
        if method in ("decord", "full-res"):
            return with_decord(method == "full-res")
        raise ValueError(method)

    run()
    wall, cpu = [], []
    for _ in range(repeat):
        start, used = time.perf_counter(), cpu_s()
        run()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((cpu_s() - used) * 1000)
    return {"ms": min(wall), "cpu_ms": min(cpu), "rss_mb": peak_rss_mb()}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def frame_counts(path: Path) -> dict[str, int]:
    """Frames each approach decodes for the 8 sampled frames (see the module docstring)."""
    import av

    from service.video.decode import Convert, Opener, decode_plan, demux, sparse_decode
    from service.video.sampling import sample_indices

    packets = demux(str(path))
    order = sample_indices(len(packets.pts), SPEC["num_segments"])[0]
    with av.open(str(path)) as container:
        kinds = {f.pts: int(f.pict_type) for f in container.decode(container.streams.video[0])}  # I 1, P 2, B 3
    display = packets.display
    wanted = {display[i] for i in order}
    runs = decode_plan(packets, order)
    in_runs = [packets.pts[n] for start, end in runs for n in range(start, end + 1)]
    _, decoded = sparse_decode(Opener(str(path), 1), packets, order, Convert(32, 32, 0))
    return {
        "sampled": len(order),
        "minimum": sum(1 for pts in in_runs if kinds[pts] in (1, 2) or pts in wanted),
        "ours": decoded,
        "runs": len(in_runs),
        "sequential": display.index(display[order[-1]]) + 1,
    }


def peak_rss_mb() -> float:
    """VmHWM: unlike ru_maxrss it starts afresh at exec, so a child does not inherit our peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, path: Path, repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", method, str(path), "--repeat", str(repeat)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from harness.load import load_average

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results", type=Path, help="append the tables to this markdown file")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.repeat)))
        return
    load_before = load_average()
    lines = [
        f"## Decoding (`bench/decode.py --repeat {args.repeat}`), {dt.date.today().isoformat()}, "
        "CPU, one decoder thread",
        "",
        "8 TSN-sampled frames, scale 256 / crop 224, x264 veryfast clips (B-frames, a keyframe every 2 s). "
        "Best of the repeats, each method in its own process. CPU ms = user + system (core·ms).",
        "",
        "| clip | method | ms / video | CPU ms / video | peak RSS MB | CPU vs decord |",
        "|---|---|---:|---:|---:|---:|",
    ]
    frames: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h, seconds in CLIPS:
            path = make_clip(Path(tmp) / f"{w}x{h}.mp4", w, h, seconds)
            name = f"{w}×{h} {seconds} s"
            rows = {method: measure(method, path, args.repeat) for method in METHODS}
            for method, row in rows.items():
                ratio = row["cpu_ms"] / rows["decord"]["cpu_ms"]
                lines.append(f"| {name} | {method} | {row['ms']:.0f} | {row['cpu_ms']:.0f} | {row['rss_mb']:.0f} "
                             f"| {ratio:.2f}× |")  # fmt: skip
            c = frame_counts(path)
            frames.append(
                f"| {name} | {c['sampled']} | {c['minimum']} | {c['ours']} | {c['runs']} | {c['sequential']} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "Frames decoded for the 8 sampled frames: the lower bound of exact decoding (references in the "
        "runs + sampled), ours, decord's (every frame of the runs), and a sequential decoder's.",
        "",
        "| clip | sampled | minimum (lower bound) | ours | decord | sequential |",
        "|---|---:|---:|---:|---:|---:|",
        *frames,
        "",
        f"Load average {load_before} before, {load_average()} after.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.results:
        with args.results.open("a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
