"""The test suite's wall time and CPU: one pytest process against `tools/run_tests.py` (what
`make unit` runs), alternated in one run so both see the same machine.

    python -m bench.suite_time                    # 2 rounds: one, several, one, several
    python -m bench.suite_time --rounds 1 --results bench/RESULTS.md
    python -m bench.suite_time --against 533a90b  # `tools/run_tests.py` here and at that commit, alternated

``--against REV`` checks REV out in a temporary worktree (sharing this checkout's environments) and
alternates the runner there and here: did a change make the suite slower?

Each row is one whole suite with coverage in this checkout (installs excluded). CPU is the user +
system time of the run and every process it waited for (children's rusage); "CPU use" is that over
the wall time (200% is both cores of a 2-core machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.load import load_average  # noqa: E402

CONFIGS = {
    "one pytest process": [sys.executable, "-m", "pytest", "-q", "--cov", "--cov-report=", "-p", "no:cacheprovider"],
    "tools/run_tests.py": [sys.executable, "tools/run_tests.py", "-q"],
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str], cwd: Path = ROOT) -> tuple[float, float, int]:
    start_cpu, start = children_cpu(), time.perf_counter()
    code = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, children_cpu() - start_cpu, code


def worktree(rev: str, directory: Path) -> Path:
    """REV checked out in ``directory``, with this checkout's environments linked in (tests call them)."""
    subprocess.run(["git", "worktree", "add", "--detach", str(directory), rev], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    for venv in (".venv", ".venv-triton"):
        if (ROOT / venv).exists():
            (directory / venv).symlink_to(ROOT / venv)
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of every config, alternated")
    p.add_argument("--results", type=Path, help="append the table to this markdown file")
    p.add_argument("--against", metavar="REV", help="compare the runner here with the runner at this commit")
    a = p.parse_args(argv)
    configs = {name: (command, ROOT) for name, command in CONFIGS.items()}
    if a.against:
        other = worktree(a.against, Path(tempfile.mkdtemp(prefix="suite-time-")) / "checkout")
        runner = CONFIGS["tools/run_tests.py"]
        configs = {f"at {a.against}": (runner, other), "this checkout": (runner, ROOT)}
    rows = ["| round | how | load at start | wall | CPU | CPU use | passed |",
            "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(1, a.rounds + 1):
        for name, (command, cwd) in configs.items():
            load = load_average()
            wall, cpu, code = run_once(command, cwd)
            walls[name].append(wall)
            rows.append(f"| {round_} | {name} | {load} | {wall:.0f} s | {cpu:.0f} s | {cpu / wall:.0%} | "
                        f"{'yes' if code == 0 else f'no (exit {code})'} |")  # fmt: skip
            print(rows[-1], flush=True)
    one, several = (min(w) for w in walls.values())
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    command = f"python -m bench.suite_time --rounds {a.rounds}" + (f" --against {a.against}" if a.against else "")
    head = (f"`{command}`, {dt.date.today()}, {machine}; best of each: {several:.0f} s against {one:.0f} s, "
            f"**{several / one:.2f}×**")  # fmt: skip
    table = "\n".join([head, "", *rows])
    print(table)
    if a.results:
        with a.results.open("a") as f:
            f.write("\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
