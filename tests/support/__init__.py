"""What the tests share besides fixtures (conftest.py holds those): paths, sample videos, the tiny
store's labels; ``checkpoints`` makes synthetic TSM checkpoints, ``models`` small real networks."""

from __future__ import annotations

from harness.process import ROOT

TESTS = ROOT / "tests"
SAMPLES = TESTS / "data" / "videos"
SAMPLE_VIDEOS = sorted(p for p in SAMPLES.glob("*") if p.suffix not in (".md", ".json", ".sh"))
TINY_LABELS = ["alpha", "bravo", "charlie", "delta", "echo"]
UPLOAD_LIMIT = 24_000_000  # of the shared server: a 20 MB video fits, 25 MB does not
__all__ = ["ROOT", "SAMPLES", "SAMPLE_VIDEOS", "TESTS", "TINY_LABELS", "UPLOAD_LIMIT"]
