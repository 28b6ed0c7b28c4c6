"""Runs the whole test suite as three pytest processes side by side, then reports the coverage of
service/ over all of them (and over the server and decode-worker processes the tests start).

Why several processes: one pytest process keeps a 2-core machine only half busy (104% CPU over a
6-minute run, bench/RESULTS "Test suite time"): much of the suite waits on servers, sockets,
subprocesses and single-threaded Python. Two processes reached 167%, three 175-188% (a fourth would
only add its start-up). Why not pytest-xdist: under its workers the Go tools of the deployment tests
twice spun at full CPU until killed; plain pytest processes are what one pytest process already
is. Every test file runs in exactly one of them: each group below in its own, everything else in
the last, so a new test file can never be left out.

    python tools/run_tests.py            # what `make unit` runs
    python tools/run_tests.py -x -q      # extra arguments go to every pytest process
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent
# Groups of files that each run in a pytest process of their own, beside one for the rest: the
# torch-bound files, split so that every process takes a similar time on two cores.
GROUPS = [
    [
        "tests/inference/test_engines.py",
        "tests/models/test_tsm.py",
        "tests/live/test_live.py",
        "tests/e2e/test_installed.py",
    ],
    ["tests/training/test_training.py", "tests/e2e/test_resilience.py", "tests/docs/test_paper.py"],
]


def pytest_argv(files: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "--cov", "--cov-report=", "-p", "no:cacheprovider", *extra, *files]


def main(extra: list[str], root: Path = ROOT, groups: list[list[str]] = GROUPS) -> int:
    for stale in [*root.glob(".coverage"), *root.glob(".coverage.*")]:
        stale.unlink()
    rest = [f"--ignore={name}" for group in groups for name in group]
    data = [root / f".coverage.group{i}" for i in range(len(groups) + 1)]

    def env(data_file: Path) -> dict[str, str]:
        # absolute: the servers the tests start write their coverage from other working directories
        return {**os.environ, "COVERAGE_FILE": str(data_file)}

    codes: dict[str, int] = {}
    with ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in groups]
        background = [
            subprocess.Popen(pytest_argv(group, extra), cwd=root, env=env(path), stdout=log, stderr=subprocess.STDOUT)
            for group, path, log in zip(groups, data[:-1], logs, strict=True)
        ]
        try:
            codes["the rest"] = subprocess.run(pytest_argv(rest, extra), cwd=root, env=env(data[-1])).returncode
        except BaseException:  # Ctrl-C or an error here: no pytest process outlives the run
            for proc in background:
                proc.terminate()
            raise
        for group, proc, log in zip(groups, background, logs, strict=True):
            codes[", ".join(group)] = proc.wait()
            log.seek(0)
            print(f"\n==== the pytest process of {', '.join(group)} ====", flush=True)
            print(log.read(), flush=True)

    combined = coverage.Coverage(data_file=str(root / ".coverage"))
    combined.combine([str(path) for path in data if path.exists()])
    combined.save()
    print("==== coverage of service/, over every pytest process and every process they started ====", flush=True)
    combined.report()
    failed = [name for name, code in codes.items() if code != 0]
    if failed:
        print(f"FAILED: the pytest process of {'; of '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
