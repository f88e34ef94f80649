"""The isolation plugin (tests/isolation.py), on a tiny suite in a subprocess: tests marked
``isolated`` run in another interpreter (one per module, or their own with ``alone=True``), their
failures and skips come back as such, and unmarked tests run in the pytest process itself."""
import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

SUITE = '''
import os

import pytest


def _record(tag):
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"{tag} {os.getpid()}\\n")


@pytest.mark.isolated
def test_marked_one():
    _record("one")


@pytest.mark.isolated
def test_marked_two():
    _record("two")


@pytest.mark.isolated(alone=True)
def test_marked_alone():
    _record("alone")


def test_unmarked_runs_here():
    _record("here")


@pytest.mark.isolated
def test_marked_failure():
    assert 1 + 1 == 3, "planted failure"


@pytest.mark.isolated
def test_marked_skip():
    pytest.skip("nothing to do")
'''


def test_marked_tests_run_in_fresh_interpreters_and_keep_their_outcome(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["isolation"]\n')
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PID_FILE": str(pids)}
    env.pop("POLYACT_ISOLATION_REPORT", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_suite.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    outcomes = {name: outcome for outcome, name in
                re.findall(r"^(PASSED|FAILED|SKIPPED)(?: \[\d+\])? test_suite\.py:{1,2}(?:\d+: )?(\w+)", output,
                           re.MULTILINE)}
    for name in ("test_marked_one", "test_marked_two", "test_marked_alone", "test_unmarked_runs_here"):
        assert outcomes.get(name) == "PASSED", output
    assert outcomes.get("test_marked_failure") == "FAILED" and "planted failure" in output, output
    assert "1 failed, 4 passed, 1 skipped" in output, output
    runs = dict(line.split() for line in pids.read_text().splitlines())
    assert runs["one"] == runs["two"]  # one child for the module's isolated tests
    assert len({runs["one"], runs["alone"], runs["here"]}) == 3  # alone: its own child; unmarked: here
    assert done.returncode == 1
