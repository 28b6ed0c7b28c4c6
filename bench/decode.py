"""Decode cost per video: our path vs the usual full-resolution path vs PyAV seeking.

    .venv/bin/python bench/decode.py [--repeat 5] [--seconds 10]

Encodes two 10 s H.264 clips (320x240 and 1280x720, 25 fps, a keyframe every 2 s, B-frames)
with PyAV, then times each method in a fresh process (so its peak RSS is its own) on 8 TSN-sampled
frames resized to 256 and centre-cropped to 224. Then pool throughput: workers x decoder threads.

Methods:
- ours:        service.decode.decode_file (decord, sampled frames only, resized while decoding)
- ours-kf:     the same with sampling="keyframes" (approximate)
- ours-pyav:   our PyAV fallback (demux count, sequential decode, resize while converting)
- full-res:    what other servers do: decord get_batch at full resolution, then resize each frame
- pyav-seek:   PyAV: seek to each sampled frame's time, decode to it, resize while converting
- pyav-seek-skip: pyav-seek, but frames neither wanted nor referenced are skipped (skip_frame=NONREF)
- order:       decord per-frame reads (vr[i]) in sorted order, resized while decoding
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
METHODS = ["ours", "ours-kf", "ours-pyav", "full-res", "pyav-seek", "pyav-seek-skip", "order"]


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


def run_one(method: str, path: str, repeat: int, threads: int) -> dict[str, float]:
    """Runs in a fresh process: one warm-up, then ``repeat`` timed decodes."""
    import numpy as np

    from service.decode import DecodeLimits, decode_file
    from service.sampling import SamplingSpec, assemble, sample_indices, scaled_size

    limits = DecodeLimits(4096 * 2304, 8192, 3600.0, 60.0, 4096, 1000)
    spec = SamplingSpec(**SPEC)  # type: ignore[arg-type]

    def full_res() -> np.ndarray:
        import decord

        from service.decode import _resize

        vr = decord.VideoReader(path, num_threads=threads)
        order = sample_indices(len(vr), spec.num_segments)[0]
        batch = vr.get_batch(order).asnumpy()
        w, h = scaled_size(batch.shape[2], batch.shape[1], spec.scale_size)
        small = np.stack([_resize(f, w, h) for f in batch])
        return assemble(small, order, [order], spec)

    def per_frame() -> np.ndarray:
        import decord

        probe = decord.VideoReader(path, num_threads=threads)
        w, h = scaled_size(probe[0].shape[1], probe[0].shape[0], spec.scale_size)
        vr = decord.VideoReader(path, width=w, height=h, num_threads=threads)
        order = sample_indices(len(vr), spec.num_segments)[0]
        small = np.stack([vr[i].asnumpy() for i in order])
        return assemble(small, order, [order], spec)

    def pyav_seek() -> np.ndarray:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            n, rate, tb = stream.frames, stream.average_rate, stream.time_base
            assert n and rate and tb
            w, h = scaled_size(stream.codec_context.width, stream.codec_context.height, spec.scale_size)
            order = sample_indices(n, spec.num_segments)[0]
            frames = []
            for i in order:
                target = int(Fraction(i) / rate / tb) + (stream.start_time or 0)
                container.seek(target, stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts is not None and frame.pts >= target:
                        frames.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
                        break
            return assemble(np.stack(frames), order, [order], spec)

    def pyav_seek_skip() -> np.ndarray:
        """pyav-seek, but frames that are neither wanted nor referenced are not decoded at all."""
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            n, rate, tb = stream.frames, stream.average_rate, stream.time_base
            assert n and rate and tb
            w, h = scaled_size(stream.codec_context.width, stream.codec_context.height, spec.scale_size)
            order = sample_indices(n, spec.num_segments)[0]
            targets = [int(Fraction(i) / rate / tb) + (stream.start_time or 0) for i in order]
            wanted = set(targets)
            frames = []
            for target in targets:
                container.seek(target, stream=stream, backward=True)
                found = None
                for packet in container.demux(stream):
                    keep = packet.pts is None or packet.pts in wanted
                    stream.codec_context.skip_frame = "DEFAULT" if keep else "NONREF"
                    for frame in packet.decode():
                        if frame.pts is not None and frame.pts >= target:
                            found = frame.to_ndarray(width=w, height=h, format="rgb24")
                            break
                    if found is not None:
                        break
                assert found is not None
                frames.append(found)
            return assemble(np.stack(frames), order, [order], spec)

    def run() -> object:
        if method == "ours":
            return decode_file(path, spec, limits, threads=threads)
        if method == "ours-kf":
            kf = SamplingSpec(**SPEC, sampling="keyframes")  # type: ignore[arg-type]
            return decode_file(path, kf, limits, threads=threads)
        if method == "ours-pyav":
            return decode_file(path, spec, limits, decoder="pyav", threads=threads)
        if method == "full-res":
            return full_res()
        if method == "pyav-seek":
            return pyav_seek()
        if method == "pyav-seek-skip":
            return pyav_seek_skip()
        if method == "order":
            return per_frame()
        raise ValueError(method)

    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": min(times), "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """VmHWM: unlike ru_maxrss it starts afresh at exec, so a child does not inherit our peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, path: Path, repeat: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", method, str(path), "--repeat", str(repeat), "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def idle_rss() -> float:
    code = (
        "import resource, numpy, av, decord, service.decode; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return int(out.stdout.strip()) / 1024


async def pool_throughput(path: Path, workers: int, threads: int, videos: int) -> float:
    from service.decode import DecodeLimits
    from service.decode_pool import DecodePool
    from service.sampling import SamplingSpec

    pool = DecodePool(DecodeLimits(4096 * 2304, 8192, 3600.0, 60.0, 4096, 1000), workers, decoder_threads=threads)
    await pool.start()
    spec = SamplingSpec(**SPEC)  # type: ignore[arg-type]
    try:
        await asyncio.gather(*(pool.decode(path, spec) for _ in range(workers)))  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(pool.decode(path, spec) for _ in range(videos)))
        return videos / (time.perf_counter() - start)
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.repeat, args.threads)))
        return

    import os

    print(f"# {os.cpu_count()} CPU cores; 8 frames, scale 256, crop 224; best of {args.repeat}")
    print(f"# idle worker RSS (numpy + av + decord imported): {idle_rss():.0f} MB\n")
    with tempfile.TemporaryDirectory() as tmp:
        clips = {
            "320x240": make_clip(Path(tmp) / "small.mp4", 320, 240, args.seconds),
            "1280x720": make_clip(Path(tmp) / "hd.mp4", 1280, 720, args.seconds),
        }
        print("| clip | method | threads | ms / video | peak RSS MB | vs full-res |")
        print("|---|---|---:|---:|---:|---:|")
        for name, path in clips.items():
            rows = {}
            for threads in (1, 0):
                for method in METHODS:
                    if threads == 0 and method not in ("ours", "full-res"):
                        continue
                    rows[(method, threads)] = measure(method, path, args.repeat, threads)
            for (method, threads), row in rows.items():
                ratio = row["ms"] / rows[("full-res", threads)]["ms"]
                label = "auto" if threads == 0 else str(threads)
                print(f"| {name} | {method} | {label} | {row['ms']:.0f} | {row['rss_mb']:.0f} | {ratio:.2f}x |")
        print("\nPool throughput (videos/s, 1280x720 clip, ours):")
        print("| workers | decoder threads | videos/s |")
        print("|---:|---:|---:|")
        for workers, threads in ((1, 1), (1, 2), (2, 1), (2, 2)):
            rate = asyncio.run(pool_throughput(clips["1280x720"], workers, threads, videos=12))
            print(f"| {workers} | {threads} | {rate:.2f} |")


if __name__ == "__main__":
    main()
