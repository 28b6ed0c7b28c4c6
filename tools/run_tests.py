"""Runs the whole test suite as two pytest processes side by side, then reports the coverage of
service/ over both (and over the server and decode-worker processes the tests start).

Why two processes: one pytest process keeps a 2-core machine only half busy (104% CPU over a
6-minute run, bench/RESULTS "Test suite time"): much of the suite waits on servers, sockets,
subprocesses and single-threaded Python. Why not pytest-xdist: under its workers the Go tools of
the deployment tests twice spun at full CPU until killed; two plain pytest processes are what one
pytest process already is, twice. Every test file runs in exactly one of them: the first takes the
files named below (the compute-bound ones: model, engines, training), the second everything else,
so a new test file can never be left out.

    python tools/run_tests.py            # what `make unit` runs
    python tools/run_tests.py -x -q      # extra arguments go to both pytest processes
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent
# Torch-bound files, about half of the suite's time; the second process takes the I/O-bound rest.
FIRST = [
    "tests/test_engines.py",
    "tests/test_training.py",
    "tests/test_resilience.py",
    "tests/test_model.py",
]


def pytest_argv(files: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "--cov", "--cov-report=", "-p", "no:cacheprovider", *extra, *files]


def main(extra: list[str]) -> int:
    data = [ROOT / ".coverage.first", ROOT / ".coverage.second"]
    for stale in [*ROOT.glob(".coverage"), *ROOT.glob(".coverage.*")]:
        stale.unlink()
    ignore_first = [f"--ignore={name}" for name in FIRST]

    def env(data_file: Path) -> dict[str, str]:
        # absolute: the servers the tests start write their coverage from other working directories
        return {**os.environ, "COVERAGE_FILE": str(data_file)}

    with tempfile.TemporaryFile("w+") as first_log:
        first = subprocess.Popen(pytest_argv(FIRST, extra), cwd=ROOT, env=env(data[0]), stdout=first_log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        second = subprocess.run(pytest_argv(ignore_first, extra), cwd=ROOT, env=env(data[1]), check=False)
        first.wait()
        first_log.seek(0)
        print(f"\n==== the first pytest process ({', '.join(FIRST)}) ====", flush=True)
        print(first_log.read(), flush=True)

    combined = coverage.Coverage(data_file=str(ROOT / ".coverage"))
    combined.combine([str(path) for path in data if path.exists()])
    combined.save()
    print("==== coverage of service/, both processes and every process they started ====", flush=True)
    combined.report()
    failed = [name for name, code in (("first", first.returncode), ("second", second.returncode)) if code != 0]
    if failed:
        print(f"FAILED: the {' and the '.join(failed)} pytest process", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
