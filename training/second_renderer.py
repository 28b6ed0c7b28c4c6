"""A second, independent renderer of the synthetic action clips.

It was written from the written specification only, without reading training/synthetic.py, so that its shapes,
textures, anti-aliasing, timing and noise share none of that generator's implementation choices. Scoring a model on
these clips estimates how far it generalises beyond its own generator. Never train on it: that would spend the one
thing it is for, being unseen.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from training.synthetic import LABELS  # the class list is the specification; nothing else is shared

_SALT = 0x5EC0D  # keeps this renderer's random streams apart from anything else keyed on (seed, index)
_EXTENT = 1.45  # sprite half-width in object units (the object's diameter is 2 units); holds a rotated square
_BASE = 512  # finest sprite level; coarser levels are 2x2 averages, i.e. supersampled, anti-aliased coverage
_SHAPES = ("circle", "ellipse", "square", "rectangle", "triangle", "star", "polygon", "glyph", "patch")
_GLYPHS = [  # letter-like polylines (object units, y down); none looks the same after a turn
    [[(-0.5, -0.9), (-0.5, 0.9), (0.6, 0.9)]],
    [[(0.6, -0.9), (-0.5, -0.9), (-0.5, 0.9)], [(-0.5, 0.0), (0.3, 0.0)]],
    [[(-0.6, -0.9), (0.6, -0.9), (-0.2, 0.9)]],
    [[(0.3, 0.9), (0.3, -0.9), (-0.6, 0.3), (0.7, 0.3)]],
    [[(0.4, -0.9), (0.4, 0.6), (0.0, 0.9), (-0.5, 0.6)]],
    [[(-0.5, -0.9), (-0.5, 0.9)], [(0.6, -0.9), (-0.5, 0.1), (0.6, 0.9)]],
    [[(-0.6, -0.9), (0.0, 0.0), (0.6, -0.9)], [(0.0, 0.0), (0.0, 0.9)]],
    [[(-0.5, 0.9), (-0.5, -0.9), (0.5, -0.9), (0.5, 0.0), (-0.5, 0.0)]],
]
_ASPECTS = [("landscape", 4 / 3), ("landscape", 16 / 9), ("square", 1.0), ("portrait", 3 / 4), ("portrait", 9 / 16)]
_CODECS = {  # encoder -> (container format, extension, options)
    "libx264": ("mp4", ".mp4", {"preset": "veryfast", "crf": "23", "x264-params": "threads=1"}),
    "libvpx-vp9": ("webm", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}),
    "mpeg4": ("avi", ".avi", {}),
}


@dataclass(frozen=True)
class _Settings:
    """What the conditions and the file name depend on; drawn before rendering so a cache hit needs no render."""

    label: int
    width: int
    height: int
    fps: int
    frames: int
    aspect: str
    codec: str
    background: str
    distractors: int
    size: float  # object's starting diameter as a share of the short side


def _settings(seed: int, index: int) -> _Settings:
    rng = np.random.default_rng([seed, index, _SALT])
    aspect, ratio = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    long = 2 * int(rng.integers(64, 321))
    short = 2 * round(long / max(ratio, 1 / ratio) / 2)
    width, height = (long, short) if ratio >= 1 else (short, long)
    fps = int(rng.integers(8, 31))
    frames = max(8, round(rng.uniform(1.0, 10.0) * fps))
    codec = str(rng.choice(list(_CODECS), p=[0.7, 0.15, 0.15]))
    background = str(rng.choice(["flat", "gradient", "noise", "textured"]))
    distractors = int(rng.integers(0, 4))
    size = float(rng.uniform(0.1, 0.4))
    return _Settings(index % 11, width, height, fps, frames, aspect, codec, background, distractors, size)


def _conditions(st: _Settings) -> dict[str, str]:
    seconds = st.frames / st.fps
    return {
        "background": st.background,
        "aspect": st.aspect,
        "duration": "under 3 s" if seconds < 3 else "3-6 s" if seconds < 6 else "6 s and over",
        "object size": "under 20%" if st.size < 0.2 else "20-30%" if st.size < 0.3 else "30% and over",
        "codec": st.codec,
        "distractors": "none" if st.distractors == 0 else "1-3",
    }


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Smooth (smoothstep-weighted bilinear) enlargement of a coarse random grid: value noise."""
    ys, xs = np.linspace(0, grid.shape[0] - 1, h), np.linspace(0, grid.shape[1] - 1, w)
    y0, x0 = np.minimum(ys.astype(int), grid.shape[0] - 2), np.minimum(xs.astype(int), grid.shape[1] - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    return _upsample(rng.random((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))), h, w)


def _pattern(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """A two-level mask (stripes, checks, dots or value noise) with the given feature size in x/y units."""
    a = rng.uniform(0, np.pi)
    u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    kind = int(rng.integers(4))
    if kind == 0:
        return ((u / period) % 1.0 < rng.uniform(0.3, 0.7)).astype(np.float32)
    if kind == 1:
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == 2:
        return (np.hypot(u / period % 1.0 - 0.5, v / period % 1.0 - 0.5) < rng.uniform(0.15, 0.45)).astype(np.float32)
    span = max(float(x.max() - x.min()), float(y.max() - y.min()))
    noise = _noise(rng, x.shape[0], x.shape[1], x.shape[0] * period / span)
    return noise if rng.random() < 0.5 else (noise > 0.5).astype(np.float32)


def _contrasting(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    """A random colour that stands apart from `ref`, so the object is never camouflaged by chance."""
    best = rng.random(3)
    for _ in range(12):
        c = rng.random(3)
        if np.linalg.norm(c - ref) > np.linalg.norm(best - ref):
            best = c
        if np.linalg.norm(best - ref) > 0.45:
            break
    return best.astype(np.float32)


def _polygon(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(u.shape, bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        if y1 != y2:
            inside ^= ((y1 > v) != (y2 > v)) & (u < x1 + (v - y1) * (x2 - x1) / (y2 - y1))
    return inside


def _radial(rng: np.random.Generator, n: int, radii: np.ndarray, jitter: float) -> list[tuple[float, float]]:
    angles = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n + rng.uniform(-jitter, jitter, n)
    return [(float(r * np.cos(t)), float(r * np.sin(t))) for r, t in zip(radii, angles, strict=True)]


def _mask(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coverage of a shape whose diameter (largest axis-aligned extent before rotation) is 2 units."""
    if kind == "circle":
        return u * u + v * v <= 1
    if kind == "ellipse":
        return u * u + (v / rng.uniform(0.4, 0.75)) ** 2 <= 1
    if kind == "square":
        return np.maximum(abs(u), abs(v)) <= 1
    if kind == "rectangle":
        return (abs(u) <= 1) & (abs(v) <= rng.uniform(0.35, 0.7))
    if kind == "triangle":
        return _polygon(u, v, _radial(rng, 3, np.ones(3), 0.45))
    if kind == "star":
        n = int(rng.integers(5, 9))
        return _polygon(u, v, _radial(rng, 2 * n, np.tile([1.0, rng.uniform(0.4, 0.6)], n), 0.0))
    if kind == "polygon":
        n = int(rng.integers(5, 10))
        return _polygon(u, v, _radial(rng, n, rng.uniform(0.75, 1.0, n), 0.2))
    if kind == "glyph":
        flip, width, dist = rng.choice([-1.0, 1.0]), rng.uniform(0.14, 0.26), np.full(u.shape, np.inf)
        for line in _GLYPHS[int(rng.integers(len(_GLYPHS)))]:
            for (x1, y1), (x2, y2) in itertools.pairwise(line):
                x1, x2, dx, dy = x1 * flip, x2 * flip, (x2 - x1) * flip, y2 - y1
                t = np.clip(((u - x1) * dx + (v - y1) * dy) / (dx * dx + dy * dy), 0, 1)
                dist = np.minimum(dist, np.hypot(u - x1 - t * dx, v - y1 - t * dy))
        return dist <= width
    phi = np.arctan2(v, u)  # "patch": a lumpy blob that always carries a texture
    lumps = sum(rng.uniform(0, 0.08) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    return np.hypot(u, v) <= 0.86 + lumps


def _sprite(rng: np.random.Generator, kind: str, ref: np.ndarray, mark: bool) -> list[np.ndarray]:
    """Premultiplied RGBA mip levels (zero-padded by one pixel) of one object, finest first."""
    c = ((np.arange(_BASE, dtype=np.float32) + 0.5) / _BASE * 2 - 1) * _EXTENT
    u, v = np.meshgrid(c, c)
    alpha = _mask(kind, u, v, rng).astype(np.float32)
    c1 = _contrasting(rng, ref)
    rgb = np.broadcast_to(c1, (_BASE, _BASE, 3)).astype(np.float32)
    if kind == "patch" or rng.random() < 0.5:
        c2 = c1 + (_contrasting(rng, c1) - c1) * rng.uniform(0.3, 1.0)
        rgb = c1 + _pattern(rng, u, v, rng.uniform(0.15, 0.6))[..., None] * (c2 - c1)
    if mark:  # an off-centre dot makes any turn visible, also on symmetric shapes
        t, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.16, 0.24)
        dot = np.hypot(u - 0.5 * np.cos(t), v - 0.5 * np.sin(t)) <= r
        rgb = np.where(dot[..., None], 1.0 - np.round(c1), rgb)
        alpha = np.maximum(alpha, dot)
    level = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=2).astype(np.float32)
    levels = [level]
    while level.shape[0] > 16:
        level = 0.25 * (level[::2, ::2] + level[1::2, ::2] + level[::2, 1::2] + level[1::2, 1::2])
        levels.append(level)
    return [np.pad(lv, ((1, 1), (1, 1), (0, 0))) for lv in levels]


def _draw(
    canvas: np.ndarray, levels: list[np.ndarray], cx: float, cy: float, turn: float, scale: float, a: float
) -> None:
    """Composites the object (centre, angle, pixels per unit, opacity) over its bounding box only."""
    cos, sin = float(np.cos(turn)), float(np.sin(turn))
    half = _EXTENT * scale * (abs(cos) + abs(sin)) + 1
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 2, canvas.shape[1])
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 2, canvas.shape[0])
    if x0 >= x1 or y0 >= y1 or a <= 0:
        return
    need = 2 * _EXTENT * scale  # on-screen sprite width; use the coarsest level still at least that sharp
    level = next((lv for lv in reversed(levels) if lv.shape[0] - 2 >= need), levels[0])
    n = level.shape[0] - 2
    px, py = np.arange(x0, x1, dtype=np.float32)[None, :] - cx, np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    k = n / (2 * _EXTENT * scale)  # inverse rotation: screen y grows downward, so +turn is clockwise on screen
    fx = np.clip((cos * px + sin * py) * k + n / 2 + 0.5, 0, n + 0.999)
    fy = np.clip((cos * py - sin * px) * k + n / 2 + 0.5, 0, n + 0.999)
    ix, iy = fx.astype(np.int32), fy.astype(np.int32)
    wx, wy = (fx - ix)[..., None], (fy - iy)[..., None]
    flat, at = level.reshape(-1, 4), iy * (n + 2) + ix  # one flat gather index is cheaper than (row, col) pairs
    top, bottom = flat[at], flat[at + n + 2]
    top += (flat[at + 1] - top) * wx
    bottom += (flat[at + n + 3] - bottom) * wx
    rgba = (top + (bottom - top) * wy) * a
    region = canvas[y0:y1, x0:x1]
    region *= 1 - rgba[..., 3:]
    region += rgba[..., :3]


def _background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    c1 = rng.random(3).astype(np.float32)
    c2 = c1 + (rng.random(3).astype(np.float32) - c1) * rng.uniform(0.15, 1.0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        mix = np.zeros((h, w), np.float32)
    elif kind == "gradient":
        if rng.random() < 0.7:
            a = rng.uniform(0, 2 * np.pi)
            mix = x * np.cos(a) + y * np.sin(a)
        else:
            mix = np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h))
        mix = (mix - mix.min()) / max(float(mix.max() - mix.min()), 1e-6)
    elif kind == "noise":
        mix = rng.random((h, w), np.float32) if rng.random() < 0.3 else _noise(rng, h, w, rng.uniform(2, max(h, w) / 3))
    else:
        mix = _pattern(rng, x, y, rng.uniform(3, max(h, w) / 6))
    return c1 + mix[..., None] * (c2 - c1)


def _frames(st: _Settings, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yields the clip's RGB uint8 frames."""
    w, h, label, jit = st.width, st.height, st.label, int(rng.integers(0, 3))
    short = min(w, h)
    bg = _background(rng, st.background, h + 2 * jit, w + 2 * jit)
    kind = str(rng.choice(_SHAPES))
    for _ in range(st.distractors):  # static, other shapes, baked into the background once
        other = str(rng.choice([s for s in _SHAPES if s != kind]))
        lv = _sprite(rng, other, bg.mean(axis=(0, 1)), rng.random() < 0.3)
        pos = rng.uniform(0, 1, 2) * (w, h) + jit
        _draw(bg, lv, pos[0], pos[1], rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.25) * short / 2, 1.0)
    mark = rng.random() < 0.3 or (label in (4, 5) and kind != "glyph")  # marks appear off the turn classes too
    levels = _sprite(rng, kind, bg.mean(axis=(0, 1)), mark)
    s0 = s1 = st.size * short / 2
    if label == 6:  # bigger by 1.5-4x, but not past 90% of the short side
        s1 = s0 * min(rng.uniform(1.5, 4.0), 0.9 / st.size)
    elif label == 7:  # smaller by 1.5-4x, but not below 5% of the short side
        s1 = s0 / min(rng.uniform(1.5, 4.0), st.size / 0.05)
    r = _EXTENT * max(s0, s1) * 0.7  # keep the centre far enough inside that most of the object is seen

    def place(extent: int) -> float:
        lo = min(r, extent / 2)
        return float(rng.uniform(lo, extent - lo))

    xa, ya = place(w), place(h)
    xb, yb = xa, ya
    if label < 4:  # travel 20-80% of the frame along the axis, with a little drift across it
        along, across = (w, h) if label < 2 else (h, w)
        dist = rng.uniform(0.2, 0.8) * along
        lo = min(r, (along - dist) / 2)
        a0 = rng.uniform(lo, along - dist - lo)
        a0, a1 = (a0, a0 + dist) if label in (0, 3) else (a0 + dist, a0)
        drift = rng.uniform(-0.05, 0.05) * across
        xa, xb, ya, yb = (a0, a1, ya, ya + drift) if label < 2 else (xa, xa + drift, a0, a1)
    t0 = rng.uniform(0, 2 * np.pi)
    t1 = t0 + (rng.uniform(np.pi / 2, 2 * np.pi) * (1 if label == 4 else -1) if label in (4, 5) else 0.0)
    op0 = op1 = rng.uniform(0.9, 1.0)
    if label in (8, 9):
        lowop, highop = rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)
        op0, op1 = (lowop, highop) if label == 8 else (highop, lowop)
    span = rng.uniform(0.3, 1.0)
    start, ease = rng.uniform(0, 1 - span), rng.random() < 0.5
    sigma, blur = rng.uniform(0, 0.03) * 255, rng.random() < 0.3
    bg = bg * 255  # work in 8-bit units from here on
    levels = [lv * np.array([255, 255, 255, 1], np.float32) for lv in levels]
    # A few noise fields cut at random offsets per frame pass for fresh sensor noise at a fraction of the cost.
    bank = [rng.standard_normal((h + 8, w + 8, 3), dtype=np.float32) * sigma + 0.5 for _ in range(3)]
    state, comp = None, bg
    for i in range(st.frames):
        p = float(np.clip((i / (st.frames - 1) - start) / span, 0, 1))
        p = p * p * (3 - 2 * p) if ease else p
        if p != state:  # the scene only changes while the motion runs; reuse it before and after
            state, comp = p, bg.copy()
            cx, cy = xa + (xb - xa) * p + jit, ya + (yb - ya) * p + jit
            _draw(comp, levels, cx, cy, t0 + (t1 - t0) * p, s0 * (s1 / s0) ** p, op0 + (op1 - op0) * p)
            if blur:
                pad = np.pad(comp, ((1, 1), (1, 1), (0, 0)), mode="edge")
                row = pad[:, :-2] + 2 * pad[:, 1:-1] + pad[:, 2:]
                comp = (row[:-2] + 2 * row[1:-1] + row[2:]) / 16
        ox, oy, nx, ny = rng.integers(0, 2 * jit + 1, 2).tolist() + rng.integers(0, 9, 2).tolist()
        img = comp[oy : oy + h, ox : ox + w] + bank[int(rng.integers(3))][ny : ny + h, nx : nx + w]
        yield np.clip(img, 0, 255, out=img).astype(np.uint8)  # camera jitter above: the whole frame shifts


def render_clip(index: int, seed: int, out_dir: Path) -> tuple[Path, int, dict[str, str]]:
    """Renders clip `index` of `seed` into out_dir (skipped if already there); returns (path, label, conditions)."""
    st = _settings(seed, index)
    fmt, ext, options = _CODECS[st.codec]
    out_dir = Path(out_dir)
    path = out_dir / f"second_s{seed}_i{index:06d}{ext}"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{path.stem}.{os.getpid()}.tmp{ext}"
        try:
            with av.open(str(tmp), mode="w", format=fmt) as container:
                stream = container.add_stream(st.codec, rate=st.fps, options=dict(options))
                assert isinstance(stream, av.VideoStream)
                stream.width, stream.height, stream.pix_fmt = st.width, st.height, "yuv420p"
                if st.codec == "mpeg4":
                    stream.codec_context.bit_rate = int(st.width * st.height * st.fps * 0.3)
                for i, img in enumerate(_frames(st, np.random.default_rng([seed, index, _SALT, 1]))):
                    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                    frame.pts, frame.time_base = i, Fraction(1, st.fps)
                    container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path, st.label, _conditions(st)


def main() -> None:
    parser = argparse.ArgumentParser(description="Render clips with the independent second renderer.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for index in range(args.count):
        path, label, _ = render_clip(index, args.seed, args.out_dir)
        print(f"{path}\t{LABELS[label]}", flush=True)


if __name__ == "__main__":
    main()
