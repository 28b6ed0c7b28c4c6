"""The test runner `make unit` uses (tools/run_tests.py), on a project of its own: every file runs
once, in its group's process or the rest's, a failure in a background process fails the run, and
the coverage of every process is combined."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import run_tests


def test_every_file_runs_once_and_a_failing_background_process_fails_the_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs.txt"
    (tmp_path / "tests").mkdir()
    for name, outcome in (("grouped", "True"), ("failing", "False"), ("other", "True")):
        (tmp_path / "tests" / f"test_{name}.py").write_text(
            f"def test_{name}():\n    with open({str(runs)!r}, 'a') as f:\n        f.write('{name}\\n')\n"
            f"    assert {outcome}\n"
        )
    (tmp_path / ".coverage.stale").write_text("left by an earlier run")

    code = run_tests.main(["-q"], root=tmp_path, groups=[["tests/test_grouped.py"], ["tests/test_failing.py"]])

    assert code == 1
    assert sorted(runs.read_text().split()) == ["failing", "grouped", "other"]
    out, err = capfd.readouterr()
    assert "FAILED: the pytest process of tests/test_failing.py" in err and "the rest" not in err
    assert "==== the pytest process of tests/test_grouped.py ====" in out and "1 passed" in out
    assert (tmp_path / ".coverage").is_file() and not (tmp_path / ".coverage.stale").exists()
