"""Synthetic action clips in which only temporal order separates most classes.

Every clip shows one main object over a static background. Ten classes come in time-reversed pairs
(left→right / right→left, up / down, clockwise / counterclockwise, growing / shrinking, fading in /
fading out): the *set* of frames of a clip and of its time reversal are alike, only their order
differs. "standing still" has no motion at all.

A clip is fully determined by ``(split, seed, index)``: :func:`sample_clip` draws its settings,
:func:`render` draws its frames with numpy (the object is a premultiplied RGBA sprite, mip-mapped,
warped per frame with bilinear sampling, so edges are anti-aliased at any size), :func:`write_clip`
encodes it with PyAV (H.264 MP4 mostly, some VP9 WebM and MPEG-4 AVI).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LABELS = [
    "moving left to right",
    "moving right to left",
    "moving up",
    "moving down",
    "rotating clockwise",
    "rotating counterclockwise",
    "growing",
    "shrinking",
    "fading in",
    "fading out",
    "standing still",
]
LEFT_TO_RIGHT, RIGHT_TO_LEFT, UP, DOWN, CW, CCW, GROW, SHRINK, FADE_IN, FADE_OUT, STILL = range(11)

# Splits keep training, validation and evaluation clips apart whatever seeds are passed.
SPLIT_TRAIN, SPLIT_VAL, SPLIT_EVAL, SPLIT_EXAMPLE, SPLIT_EASY = 1, 2, 3, 4, 5
# Bumped whenever a clip's pixels change for the same (split, seed, index): it keys the clip caches.
GENERATOR_VERSION = 4

ASPECTS = [(4, 3), (16, 9), (1, 1), (3, 4), (9, 16)]
BACKGROUNDS = ["flat", "gradient", "noise", "textured"]
SHAPES = ["circle", "ellipse", "square", "rectangle", "triangle", "star", "polygon", "glyph", "patch", "arrow"]
# Shapes whose turn is visible without help; the others get an off-centre marker when they rotate.
ASYMMETRIC = {"triangle", "glyph", "patch", "arrow"}
# container, encoder, suffix, share of clips
FORMATS = [("mp4", "libx264", ".mp4", 0.7), ("webm", "libvpx-vp9", ".webm", 0.15), ("avi", "mpeg4", ".avi", 0.15)]
SPRITE = 512  # side of the finest sprite level; coarser levels halve it


@dataclass(frozen=True)
class Ranges:
    """What clips vary over. ``FULL`` covers the issue's ranges generously (the motions a little wider);
    ``ISSUE`` is exactly the issue's numbers; training may use shorter, smaller clips. ``easy`` clips (a
    curriculum's first stage) show one big, sharp object on a plain background that moves, turns,
    scales or fades a lot over the whole clip, whatever the motion ranges say. ``hard`` clips (the
    ``STRESS`` split) take the hardest of what is not a range: noise or textured backgrounds, three
    distractors, portrait frames. ``hardest`` pushes each setting on its own to its hard end now and then
    (smallest object, shortest travel, turn and scale, shortest clip, lowest rate, busiest background,
    three distractors, portrait)."""

    duration_s: tuple[float, float] = (1.0, 10.0)
    fps: tuple[int, int] = (8, 30)
    long_side: tuple[int, int] = (128, 640)
    easy: bool = False
    object_size: tuple[float, float] = (0.08, 0.45)  # diameter, share of the short side
    travel: tuple[float, float] = (0.18, 0.85)  # share of the frame along the motion's axis
    turn_deg: tuple[float, float] = (80.0, 380.0)
    scale: tuple[float, float] = (1.4, 4.2)
    hard: bool = False
    # Share of draws that take the hardest end of their range, each setting on its own (training covers
    # every range at its hardest without making every clip hard at once).
    hardest: float = 0.0

    @property
    def hard_share(self) -> float:
        """``hardest`` as drawn: easy clips are never pushed to a hard end."""
        return 0.0 if self.easy else self.hardest


FULL = Ranges()
ISSUE = Ranges(object_size=(0.10, 0.40), travel=(0.20, 0.80), turn_deg=(90.0, 360.0), scale=(1.5, 4.0))
TRAIN = Ranges(duration_s=(1.0, 3.0), long_side=(128, 360), hardest=0.2)
# The hardest value of every range at once (evaluation only): short, low-rate, small clips of small
# objects that barely move, turn or scale, on busy backgrounds with distractors, in portrait frames.
STRESS = Ranges(duration_s=(1.0, 1.5), fps=(8, 10), long_side=(128, 160), object_size=(0.10, 0.12),
                travel=(0.20, 0.25), turn_deg=(90.0, 110.0), scale=(1.5, 1.7), hard=True)  # fmt: skip


@dataclass(frozen=True)
class ClipSpec:
    label: int
    width: int
    height: int
    fps: int
    frames: int
    container: str
    encoder: str
    suffix: str
    quality: float  # 0 best .. 1 worst, mapped to each encoder's own scale
    scene_seed: int
    ranges: Ranges = FULL  # the motion's ranges are drawn in build_scene

    @property
    def name(self) -> str:
        return f"{self.scene_seed:016x}{self.suffix}"


def clip_rng(split: int, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([split, seed, index])


def draw(rng: np.random.Generator, bounds: tuple[float, float], hardest: float, hard_end: int = 0) -> float:
    """Uniform within ``bounds``, or with probability ``hardest`` within the 5% of the range at its hard end
    (``bounds[hard_end]``)."""
    lo, hi = bounds
    if hardest and rng.uniform() < hardest:
        edge = 0.05 * (hi - lo)
        return float(rng.uniform(lo, lo + edge) if hard_end == 0 else rng.uniform(hi - edge, hi))
    return float(rng.uniform(lo, hi))


def sample_clip(split: int, seed: int, index: int, ranges: Ranges = FULL, label: int | None = None) -> ClipSpec:
    """The settings of clip ``index``; classes cycle with the index unless ``label`` is given."""
    rng = clip_rng(split, seed, index)
    label = index % len(LABELS) if label is None else label
    hardest = ranges.hard_share
    portrait = ranges.hard or bool(hardest and rng.uniform() < hardest)
    aspects = [a for a in ASPECTS if a[1] > a[0]] if portrait else ASPECTS
    aw, ah = aspects[rng.integers(len(aspects))]
    long_side = draw(rng, ranges.long_side, hardest)
    scale = long_side / max(aw, ah)
    width, height = (max(2 * round(aw * scale / 2), 16), max(2 * round(ah * scale / 2), 16))
    fps = round(draw(rng, (ranges.fps[0] - 0.49, ranges.fps[1] + 0.49), hardest))
    frames = max(round(draw(rng, ranges.duration_s, hardest) * fps), 1)
    pick = rng.uniform()
    container, encoder, suffix = FORMATS[-1][:3]
    for fmt in FORMATS:
        if pick < fmt[3]:
            container, encoder, suffix = fmt[:3]
            break
        pick -= fmt[3]
    return ClipSpec(label, width, height, fps, frames, container, encoder, suffix, float(rng.uniform()),
                    int(rng.integers(1 << 62)), ranges)  # fmt: skip


# --- shapes and textures, in object coordinates: u right, v down, the shape inside the unit disc


def _polygon_inside(u: np.ndarray, v: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over the edges."""
    inside = np.zeros(u.shape, bool)
    for (x1, y1), (x2, y2) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        inside ^= crosses & (u < (x2 - x1) * (v - y1) / (y2 - y1) + x1)
    return inside


def _fit(pts: np.ndarray) -> np.ndarray:
    """Centres a polygon on its vertex mean (turns are about the middle) and fits it in r=0.95."""
    pts = pts - pts.mean(axis=0)
    return pts * (0.95 / np.hypot(pts[:, 0], pts[:, 1]).max())


def _star(n: int, inner: float, phase: float) -> np.ndarray:
    a = phase + np.arange(2 * n) * math.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _shape_mask(kind: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if kind == "circle":
        return u * u + v * v <= 0.9
    if kind == "ellipse":
        b = rng.uniform(0.3, 0.7)
        return (u / 0.95) ** 2 + (v / b) ** 2 <= 1
    if kind == "square":
        return (np.abs(u) <= 0.66) & (np.abs(v) <= 0.66)
    if kind == "rectangle":
        b = rng.uniform(0.2, 0.5)
        half = math.sqrt(0.9 - b * b)
        return (np.abs(u) <= half) & (np.abs(v) <= b)
    if kind in ("patch",):  # a rounded square of texture
        return np.maximum(np.abs(u), np.abs(v)) + 0.1 * np.minimum(np.abs(u), np.abs(v)) <= 0.7
    if kind == "triangle":
        a = -math.pi / 2 + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.45, 0.45, 3)
        r = rng.uniform(0.6, 1.0, 3)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    elif kind == "star":
        pts = _star(int(rng.integers(5, 8)), rng.uniform(0.38, 0.6), rng.uniform(0, 2 * math.pi))
    elif kind == "polygon":
        n = int(rng.integers(5, 9))
        a = np.arange(n) * 2 * math.pi / n + rng.uniform(-0.25, 0.25, n) * (rng.uniform() < 0.5)
        r = rng.uniform(0.65, 1.0, n) if rng.uniform() < 0.5 else np.ones(n)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    elif kind == "arrow":
        w, head = rng.uniform(0.15, 0.3), rng.uniform(0.35, 0.5)
        pts = np.array([[-1, -w], [1 - 2 * head, -w], [1 - 2 * head, -2 * w - 0.15], [1, 0],
                        [1 - 2 * head, 2 * w + 0.15], [1 - 2 * head, w], [-1, w]])  # fmt: skip
    elif kind == "glyph":
        return _glyph(rng, u, v)
    else:
        raise ValueError(kind)
    return _polygon_inside(u, v, _fit(pts))


def _glyph(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """2-4 thick strokes through random points: letter-like, without symmetry."""
    pts = rng.uniform(-0.6, 0.6, (int(rng.integers(3, 6)), 2))
    width = rng.uniform(0.1, 0.2)
    mask = np.zeros(u.shape, bool)
    for p, q in itertools.pairwise(pts):
        d = q - p
        t = np.clip(((u - p[0]) * d[0] + (v - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
        mask |= (u - p[0] - t * d[0]) ** 2 + (v - p[1] - t * d[1]) ** 2 <= width * width
    return mask


def _value_noise(rng: np.random.Generator, cells: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid over [-1, 1]², bilinearly interpolated."""
    grid = rng.uniform(0, 1, (cells + 1, cells + 1))
    x = np.clip((u + 1) / 2 * cells, 0, cells - 1e-6)
    y = np.clip((v + 1) / 2 * cells, 0, cells - 1e-6)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = x - x0, y - y0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy)


def _pattern(rng: np.random.Generator, kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mixing weight in [0, 1] between two colours."""
    a = rng.uniform(0, math.pi)
    along = u * math.cos(a) + v * math.sin(a)
    if kind == "gradient":
        return np.clip((along + 1) / 2, 0, 1)
    if kind == "stripes":
        return (np.sin(along * 2 * math.pi / rng.uniform(0.25, 0.6) + rng.uniform(0, 6.3)) > 0).astype(np.float32)
    if kind == "checker":
        p = rng.uniform(0.2, 0.5)
        across = -u * math.sin(a) + v * math.cos(a)
        return ((np.floor(along / p) + np.floor(across / p)) % 2).astype(np.float32)
    if kind == "noise":
        return _value_noise(rng, int(rng.integers(3, 9)), u, v)
    return np.zeros_like(u)


def _colour(rng: np.random.Generator, away_from: np.ndarray | None = None, min_dist: float = 90) -> np.ndarray:
    """A random RGB colour (0-255), far enough from ``away_from`` to stay visible."""
    best, best_d = rng.uniform(0, 255, 3), -1.0
    for _ in range(30):
        c = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(c - away_from)) if away_from is not None else min_dist
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def make_sprite(
    rng: np.random.Generator, kind: str, colour: np.ndarray, marker: bool, size: int = SPRITE,
    texture: str | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """Premultiplied RGBA levels (float32 [L+2, L+2, 4], zero border), finest first; ``texture`` (flat,
    gradient, stripes, checker, noise) drawn at random unless given."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(g, g)
    cover = _shape_mask(kind, rng, u, v).astype(np.float32)
    if texture is None:
        texture = str(rng.choice(["flat", "gradient", "stripes", "checker", "noise"], p=[0.4, 0.15, 0.15, 0.1, 0.2]))
        if kind == "patch":
            texture = "noise" if rng.uniform() < 0.6 else str(rng.choice(["stripes", "checker"]))
    second = _colour(rng, colour, 70)
    mix = _pattern(rng, str(texture), u, v)[..., None]
    rgb = colour * (1 - mix) + second * mix
    if marker:  # an off-centre dot makes the turn of a symmetric shape visible
        dot = (u - 0.5) ** 2 + v**2 <= 0.3**2
        rgb[dot] = _colour(rng, colour, 150)
    level = np.zeros((size + 2, size + 2, 4), np.float32)
    level[1:-1, 1:-1, :3] = rgb * cover[..., None]
    level[1:-1, 1:-1, 3] = cover
    levels = [level]
    while size > 8:
        inner = levels[-1][1:-1, 1:-1]
        size //= 2
        pooled = inner.reshape(size, 2, size, 2, 4).mean(axis=(1, 3))
        nxt = np.zeros((size + 2, size + 2, 4), np.float32)
        nxt[1:-1, 1:-1] = pooled
        levels.append(nxt)
    return levels


def draw_sprite(
    levels: list[np.ndarray], cx: float, cy: float, radius: float, angle: float, width: int, height: int
) -> tuple[slice, slice, np.ndarray] | None:
    """The sprite placed at (cx, cy) with ``radius`` px and turned clockwise by ``angle`` (radians):
    (rows, cols, premultiplied RGBA [h, w, 4]) of its bounding box, or None when off-frame."""
    x0, x1 = max(math.floor(cx - radius) - 1, 0), min(math.ceil(cx + radius) + 1, width)
    y0, y1 = max(math.floor(cy - radius) - 1, 0), min(math.ceil(cy + radius) + 1, height)
    if x0 >= x1 or y0 >= y1 or radius <= 0:
        return None
    # The coarsest level that still has a texel per pixel (a cheap mip-map: no aliasing when small).
    level = levels[0]
    for candidate in levels:
        if candidate.shape[0] - 2 >= 2 * radius:
            level = candidate
    size = level.shape[0] - 2
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
    c, s = math.cos(angle), math.sin(angle)
    # Inverse of a clockwise turn on screen (y down).
    u = (c * xs[None, :] + s * ys[:, None]) / radius
    v = (-s * xs[None, :] + c * ys[:, None]) / radius
    px = (u + 1) / 2 * size + 0.5  # +1 border, -0.5 texel centre
    py = (v + 1) / 2 * size + 0.5
    ix = np.clip(np.floor(px).astype(np.int64), 0, size)
    iy = np.clip(np.floor(py).astype(np.int64), 0, size)
    fx = np.clip(px - ix, 0, 1)[..., None]
    fy = np.clip(py - iy, 0, 1)[..., None]
    top = level[iy, ix] * (1 - fx) + level[iy, ix + 1] * fx
    bottom = level[iy + 1, ix] * (1 - fx) + level[iy + 1, ix + 1] * fx
    return slice(y0, y1), slice(x0, x1), top * (1 - fy) + bottom * fy


# --- the scene -------------------------------------------------------------------------------------


def _fractal(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Natural-looking texture in [0, 1]: octaves of value noise (1/f weights), sometimes banded like wood."""
    out = np.zeros_like(u)
    total = 0.0
    for octave in range(int(rng.integers(3, 6))):
        weight = 0.55**octave
        out += weight * _value_noise(rng, 4 * 2**octave, u, v)
        total += weight
    out /= total
    if rng.uniform() < 0.3:
        out = 0.5 + 0.5 * np.sin(out * rng.uniform(10, 30))
    lo, hi = np.percentile(out, [2, 98])
    return np.asarray(np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1))


def _texture(rng: np.random.Generator, kind: str, period_px: float, long_side: int, u: np.ndarray, v: np.ndarray
             ) -> np.ndarray:  # fmt: skip
    """Mixing weight in [0, 1] of a background texture with cells of ``period_px`` pixels; checks and
    stripes axis-aligned half the time (as tiles and fabrics mostly are), turned otherwise."""
    p = 2 * period_px / long_side  # u, v span 2 over the long side
    a = 0.0 if rng.uniform() < 0.5 else rng.uniform(0, math.pi)
    along, across = u * math.cos(a) + v * math.sin(a), -u * math.sin(a) + v * math.cos(a)
    if kind == "checker":
        return ((np.floor(along / p) + np.floor(across / p)) % 2).astype(np.float32)
    if kind == "stripes":
        return (np.sin(along * 2 * math.pi / p + rng.uniform(0, 6.3)) > 0).astype(np.float32)
    if kind == "dots":
        fx, fy = along / p % 1 - 0.5, across / p % 1 - 0.5
        return (fx * fx + fy * fy < rng.uniform(0.04, 0.15)).astype(np.float32)
    return _fractal(rng, u, v)  # "natural"


@dataclass(frozen=True)
class Backdrop:
    image: np.ndarray  # float32 [H, W, 3]
    family: str  # flat, gradient, noise, textured
    texture: str  # flat, gradient; pixel, blob, pixel and blob (noise); checker, stripes, dots, natural
    cell_px: float  # a textured background's cell size, px (0 otherwise)
    colours: tuple[np.ndarray, np.ndarray]


def _background(rng: np.random.Generator, width: int, height: int, families: list[str], hardest: float = 0.0
                ) -> Backdrop:  # fmt: skip
    """The background drawn from ``families``, with what evaluation reports it by. Noise comes at pixel
    scale (static grain), blob scale or both; textures are checks, stripes, dots or natural-looking
    patches with cells from 3 px to a third of the frame; both at contrasts from faint to full
    (``hardest``: fine and full-contrast)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    long_side = max(width, height)
    u = xs / long_side * 2 - 1
    v = ys / long_side * 2 - 1
    kind = str(rng.choice(families))
    a = _colour(rng)
    contrast = draw(rng, (0.15, 1.0), hardest, hard_end=1)
    b = np.clip(a + contrast * (_colour(rng, a, 150) - a), 0, 255)
    texture, period = kind, 0.0
    if kind == "flat":
        mix = np.zeros_like(u)
    elif kind == "gradient":
        mix = _pattern(rng, "gradient", u, v)
        b = _colour(rng)
    elif kind == "noise":
        grain = rng.uniform(0, 1, u.shape).astype(np.float32)
        blobs = _value_noise(rng, int(rng.integers(3, 40)), u, v)
        texture = str(rng.choice(["pixel", "blob", "pixel and blob"]))
        mix = grain if texture == "pixel" else blobs if texture == "blob" else 0.5 * grain + 0.5 * blobs
    else:
        texture = str(rng.choice(["checker", "stripes", "dots", "natural"]))
        fine = hardest and rng.uniform() < hardest
        period = math.exp(rng.uniform(math.log(3), math.log(8 if fine else max(min(width, height) / 3, 4))))
        mix = _texture(rng, texture, period, long_side, u, v)
    img = a * (1 - mix[..., None]) + b * mix[..., None]
    return Backdrop(img.astype(np.float32), kind, texture, period, (a, b))


def _ease(rng: np.random.Generator) -> str:
    return str(rng.choice(["linear", "smooth", "in", "out"]))


def _progress(t: float, start: float, span: float, ease: str) -> float:
    p = min(max((t - start) / span, 0.0), 1.0)
    if ease == "smooth":
        return p * p * (3 - 2 * p)
    if ease == "in":
        return p * p
    if ease == "out":
        return 1 - (1 - p) ** 2
    return p


@dataclass
class Scene:
    levels: list[np.ndarray]
    background: np.ndarray  # float32 [H + 2J, W + 2J, 3], distractors drawn in
    jitter: int
    start: float  # motion start and span, as fractions of the clip
    span: float
    ease: str
    xy: tuple[tuple[float, float], tuple[float, float]]  # centre at progress 0 and 1, px
    radius: tuple[float, float]
    angle: tuple[float, float]  # radians, clockwise
    opacity: tuple[float, float]
    noise: float
    blur: int
    # What evaluation reports accuracy by (training.evaluate.conditions)
    background_kind: str = "flat"
    distractors: int = 0
    object_size: float = 0.0  # the object's diameter, share of the short side
    texture: str = "flat"  # the background's texture (Backdrop.texture)
    cell_px: float = 0.0
    shares_colour: bool = False  # the object is in one of the background's colours


def build_scene(spec: ClipSpec) -> Scene:
    rng = np.random.default_rng(spec.scene_seed)
    w, h, label, ranges = spec.width, spec.height, spec.label, spec.ranges
    easy, hardest = ranges.easy, ranges.hard_share
    short = min(w, h)
    jitter = 0 if easy else int(rng.integers(0, 3))
    families = ["flat", "gradient"] if easy else ["noise", "textured"] if ranges.hard else BACKGROUNDS
    if hardest and rng.uniform() < hardest:
        families = ["noise", "textured"]
    backdrop = _background(rng, w + 2 * jitter, h + 2 * jitter, families, hardest)
    background = backdrop.image

    kind = str(rng.choice(SHAPES))
    marker = label in (CW, CCW) and kind not in ASYMMETRIC
    # A quarter of the objects share a colour with the background (then a texture keeps them visible).
    shares = not easy and rng.uniform() < 0.25
    if shares:
        colour = backdrop.colours[int(rng.integers(2))]
        levels = make_sprite(rng, kind, colour, marker, texture=str(rng.choice(["stripes", "checker", "noise"])))
    else:
        mean_bg = background.reshape(-1, 3).mean(axis=0)
        colour = _colour(rng, mean_bg, 110)
        levels = make_sprite(rng, kind, colour, marker)
    size = (0.25, 0.45) if easy else ranges.object_size
    r = draw(rng, size, hardest) * short / 2

    distractors = 0 if easy else 3 if ranges.hard or (hardest and rng.uniform() < hardest) else int(rng.integers(0, 4))
    for _ in range(distractors):  # static, of the object's own kinds of shape, size and (sometimes) colour
        tint = colour if rng.uniform() < 0.3 else _colour(rng)
        sprite = make_sprite(rng, str(rng.choice(SHAPES)), tint, False, 128)
        drawn = draw_sprite(sprite, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(*ranges.object_size) * short / 2,
                            rng.uniform(0, 2 * math.pi), w + 2 * jitter, h + 2 * jitter)  # fmt: skip
        if drawn is not None:
            rows, cols, rgba = drawn
            background[rows, cols] = background[rows, cols] * (1 - rgba[..., 3:]) + rgba[..., :3]

    span = draw(rng, (0.8 if easy else 0.3, 1.0), hardest)
    start = rng.uniform(0, 1 - span)
    angle = rng.uniform(0, 2 * math.pi)
    centre = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
    xy, radius, angles, opacity = (centre, centre), (r, r), (angle, angle), (1.0, 1.0)
    if label in (LEFT_TO_RIGHT, RIGHT_TO_LEFT, UP, DOWN):
        along, across = (w, h) if label in (LEFT_TO_RIGHT, RIGHT_TO_LEFT) else (h, w)
        travel = draw(rng, (0.45 if easy else ranges.travel[0], ranges.travel[1]), hardest)
        lo, hi = 0.06 + travel / 2, 0.94 - travel / 2  # where the path's middle may lie
        mid = rng.uniform(lo, hi) if lo < hi else 0.5
        b0 = rng.uniform(0.2, 0.8) * across
        drift = rng.uniform(-0.05, 0.05) * short * (rng.uniform() < 0.5)
        path = [((mid - travel / 2) * along, b0), ((mid + travel / 2) * along, b0 + drift)]
        if label in (RIGHT_TO_LEFT, UP):
            path.reverse()
        if label in (UP, DOWN):
            path = [(q, p) for p, q in path]
        xy = (path[0], path[1])
    elif label in (CW, CCW):
        turn = math.radians(draw(rng, (180 if easy else ranges.turn_deg[0], ranges.turn_deg[1]), hardest))
        turn *= 1 if label == CW else -1
        angles = (angle, angle + turn)
    elif label in (GROW, SHRINK):
        factor = draw(rng, (2.5 if easy else ranges.scale[0], ranges.scale[1]), hardest)
        if rng.uniform() < 0.5:  # the drawn size is either end's
            small, big = r, min(r * factor, 0.48 * short)
        else:
            small, big = max(r / factor, 0.02 * short), r
        radius = (small, big) if label == GROW else (big, small)
    elif label in (FADE_IN, FADE_OUT):
        low, high = rng.uniform(0, 0.1), rng.uniform(0.9, 1.0)
        opacity = (low, high) if label == FADE_IN else (high, low)
    else:
        opacity = (1.0, 1.0)
    noise = draw(rng, (0.0, 12.0), hardest, hard_end=1) if rng.uniform() < 0.7 and not easy else 0.0
    blur = 0 if easy else int(rng.choice([0, 0, 1, 2]))
    return Scene(levels, background, jitter, start, span, _ease(rng), xy, radius, angles, opacity, noise, blur,
                 backdrop.family, distractors, 2 * r / short, backdrop.texture, backdrop.cell_px, shares)  # fmt: skip


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):  # separable [1, 2, 1] / 4, edges replicated
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4
    return img


def render(spec: ClipSpec, with_layer: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Frames of the clip: (uint8 RGB [H, W, 3], the main object's layer or None). The layer is what was
    composited over the background: premultiplied RGBA (float [H, W, 4], alpha = coverage × opacity)."""
    scene = build_scene(spec)
    rng = np.random.default_rng(spec.scene_seed + 1)
    w, h, j = spec.width, spec.height, scene.jitter
    pad = 8
    noise_fields = [rng.normal(0, scene.noise, (h + pad, w + pad, 3)).astype(np.float32) for _ in range(2)]
    for i in range(spec.frames):
        t = i / max(spec.frames - 1, 1)
        p = _progress(t, scene.start, scene.span, scene.ease)
        dx, dy = (int(rng.integers(-j, j + 1)), int(rng.integers(-j, j + 1))) if j else (0, 0)
        frame = scene.background[j + dy : j + dy + h, j + dx : j + dx + w].copy()
        cx = scene.xy[0][0] + p * (scene.xy[1][0] - scene.xy[0][0]) - dx
        cy = scene.xy[0][1] + p * (scene.xy[1][1] - scene.xy[0][1]) - dy
        # Size changes geometrically, so growing and shrinking look alike played backwards.
        radius = scene.radius[0] * (scene.radius[1] / scene.radius[0]) ** p
        angle = scene.angle[0] + p * (scene.angle[1] - scene.angle[0])
        opacity = scene.opacity[0] + p * (scene.opacity[1] - scene.opacity[0])
        layer = np.zeros((h, w, 4), np.float32) if with_layer else None
        drawn = draw_sprite(scene.levels, cx, cy, radius, angle, w, h)
        if drawn is not None:
            rows, cols, rgba = drawn
            frame[rows, cols] = frame[rows, cols] * (1 - opacity * rgba[..., 3:]) + opacity * rgba[..., :3]
            if layer is not None:
                layer[rows, cols] = opacity * rgba
        if scene.blur:
            frame = _blur(frame, scene.blur)
        if scene.noise:
            field = noise_fields[i % 2]
            ox, oy = int(rng.integers(0, pad + 1)), int(rng.integers(0, pad + 1))
            frame += field[oy : oy + h, ox : ox + w]
        yield np.clip(frame + 0.5, 0, 255).astype(np.uint8), layer


def write_clip(spec: ClipSpec, out_dir: Path, name: str | None = None) -> Path:
    """Renders and encodes the clip into ``out_dir``; returns the file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (name or spec.name)
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    q = spec.quality
    options: dict[str, str] = {}
    if spec.encoder == "libx264":
        # x264's lookahead (threaded or not, mb-tree) gives different bits from run to run on the same
        # frames; without it clips are reproducible. One thread: clips are encoded in parallel anyway.
        params = "threads=1:mbtree=0:rc-lookahead=0"
        options = {"preset": "veryfast", "crf": str(round(18 + 12 * q)), "x264-params": params}
    elif spec.encoder == "libvpx-vp9":
        options = {"deadline": "realtime", "cpu-used": "8", "crf": str(round(28 + 14 * q)), "b": "0"}
    with av.open(str(tmp), "w", format=spec.container) as out:
        stream = out.add_stream(spec.encoder, rate=Fraction(spec.fps), options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        if spec.encoder == "mpeg4":
            stream.codec_context.bit_rate = int(spec.width * spec.height * spec.fps * (0.5 - 0.35 * q))
        for i, (img, _) in enumerate(render(spec)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, spec.fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


# --- command line ----------------------------------------------------------------------------------


def aspect_name(width: int, height: int) -> str:
    return "square" if width == height else "portrait" if height > width else "landscape"


# tests/data/hard_clips: one clip per background family and aspect, at the busy end of the ranges.
HARD_SET_RANGES = Ranges(duration_s=(1.5, 3.0), fps=(10, 20), long_side=(160, 240), object_size=(0.12, 0.3),
                         hardest=0.3)  # fmt: skip


def hard_set() -> list[tuple[str, ClipSpec]]:
    """(name, clip) for each background family × aspect: the first clip of its own seed with that family
    and aspect, labels cycling. Picked by conditions only, never by how a model answers."""
    out = []
    for k, (family, aspect) in enumerate(itertools.product(BACKGROUNDS, ("landscape", "square", "portrait"))):
        label = k % len(LABELS)
        for index in itertools.count():
            spec = sample_clip(SPLIT_EXAMPLE, 100 + k, index, HARD_SET_RANGES, label=label)
            if aspect_name(spec.width, spec.height) == aspect and build_scene(spec).background_kind == family:
                break
        out.append((f"{family}_{aspect}_" + LABELS[label].replace(" ", "_"), spec))
    return out


# Example clips: label, index in FORMATS, seed (picked by eye for a motion that is easy to see).
EXAMPLES = [("moving left to right", 0, 5), ("rotating clockwise", 1, 0), ("growing", 2, 0), ("fading out", 0, 0),
            ("moving up", 0, 1)]  # fmt: skip
EXAMPLE_RANGES = Ranges(duration_s=(2.0, 4.0), fps=(12, 25), long_side=(240, 320))


def example_spec(label: str, fmt: int, seed: int = 0) -> ClipSpec:
    container, encoder, suffix, _ = FORMATS[fmt]
    spec = sample_clip(SPLIT_EXAMPLE, seed, LABELS.index(label), EXAMPLE_RANGES, label=LABELS.index(label))
    return replace(spec, container=container, encoder=encoder, suffix=suffix)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m training.synthetic", description="Write synthetic motion clips.")
    p.add_argument("out", type=Path, help="folder for the clips")
    p.add_argument("--count", type=int, default=22, help="clips (classes cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", action="store_true", help="write the examples/ clips (named by label), not --count")
    p.add_argument("--hard-set", action="store_true", help="write tests/data/hard_clips (family_aspect_label)")
    args = p.parse_args(argv)
    if args.hard_set:
        for name, spec in hard_set():
            print(write_clip(spec, args.out, name + spec.suffix))
        return 0
    if args.examples:
        for label, fmt, seed in EXAMPLES:
            spec = example_spec(label, fmt, seed)
            print(write_clip(spec, args.out, label.replace(" ", "_") + spec.suffix))
        return 0
    for i in range(args.count):
        spec = sample_clip(SPLIT_EVAL, args.seed, i)
        name = f"{i:04d}_" + LABELS[spec.label].replace(" ", "_") + spec.suffix
        print(write_clip(spec, args.out, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
