"""Appends a finished ``bench/gpu.sh`` output folder to bench/RESULTS.md, under the card's name.

    python -m bench.gpu_record DIR                      # DIR: the device call's files (its $OUT)
    python -m bench.gpu_record DIR --print              # show the section, append nothing
    python -m bench.gpu_record DIR --results other.md

Run on the dev box after the device call: files written on the GPU machine outside ``$OUT`` never
come back, so ``gpu.sh`` itself records nothing. The section is the probe's facts, the summary table
(phase, status, seconds) and each phase's tables as the phase wrote them. A dry run's folder is
refused (its numbers are CPU smoke numbers), unless ``--allow-dry-run``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

PHASES = [("P0", "p0_probe"), ("P1", "p1_nvdec"), ("P2", "p2_e2e"), ("P3", "p3_live"), ("P4", "p4_engines")]


def card_of(probe: dict[str, Any]) -> str:
    cards = probe.get("gpu", {}).get("cards") or []
    if cards:
        return str(cards[0].get("name", "unknown GPU"))
    return str(probe.get("torch", {}).get("device") or "no GPU")


def demote(text: str) -> str:
    """Phase tables carry their own headings (## or ###): under this section's ##, they become ####."""
    return re.sub(r"^#{2,3} ", "#### ", text, flags=re.MULTILINE)


def section(folder: Path) -> str:
    summary = json.loads((folder / "summary.json").read_text())
    probe_path = folder / "p0_probe.json"
    probe = json.loads(probe_path.read_text()) if probe_path.exists() else {}
    card = card_of(probe)
    t = probe.get("torch", {})
    lines = [
        f"## GPU: {card} (`bench/gpu.sh`, device tool), {summary.get('date', '?')}"
        + (" (dry run on CPU)" if summary.get("dry_run") else ""),
        "",
        f"One call, {summary.get('seconds', '?')} s of phases; torch {t.get('version', '?')}, CUDA {t.get('cuda')}, "
        f"Python {probe.get('host', {}).get('python', '?')}, {probe.get('host', {}).get('cores', '?')} host cores.",
        "",
        "| phase | status | seconds | results |",
        "| --- | --- | ---: | --- |",
        *[f"| {p['phase']} | {p['status']} | {p['seconds']} | {p['results']} |" for p in summary["phases"]],
    ]
    for _, stem in PHASES:
        md = folder / f"{stem}.md"
        if md.exists():
            lines += ["", demote(md.read_text().strip())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the output folder of bench/gpu.sh (summary.json, pN_*.md)")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    p.add_argument("--print", action="store_true", help="print the section; append nothing")
    p.add_argument("--allow-dry-run", action="store_true", help="record a --dry-run folder too")
    a = p.parse_args(argv)
    if not (a.folder / "summary.json").exists():
        print(f"{a.folder}: no summary.json (not a bench/gpu.sh output folder, or the run did not finish)",
              file=sys.stderr)  # fmt: skip
        return 2
    if json.loads((a.folder / "summary.json").read_text()).get("dry_run") and not (a.allow_dry_run or a.print):
        print(f"{a.folder} is a dry run's: its numbers are CPU smoke numbers (--allow-dry-run)", file=sys.stderr)
        return 2
    text = section(a.folder)
    if a.print:
        print(text)
        return 0
    with a.results.open("a") as f:
        f.write("\n" + text)
    print(f"appended {len(text.splitlines())} lines to {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
