"""The isolation plugin (tests/isolation.py), on a tiny suite in a subprocess: a test marked
``isolated`` runs in another interpreter, its failures and skips are reported as such, and
unmarked tests run in the pytest process itself."""
import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

SUITE = '''
import os

import pytest


@pytest.mark.isolated
def test_marked_runs_elsewhere(tmp_path_factory):
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"marked {os.getpid()}\\n")


def test_unmarked_runs_here():
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"unmarked {os.getpid()}\\n")


@pytest.mark.isolated
def test_marked_failure():
    assert 1 + 1 == 3, "planted failure"


@pytest.mark.isolated
def test_marked_skip():
    pytest.skip("nothing to do")
'''


def test_marked_tests_run_in_a_fresh_interpreter_and_keep_their_outcome(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["isolation"]\n')
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PID_FILE": str(pids)}
    env.pop("POLYACT_IN_ISOLATION", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_suite.py",
                           "--basetemp", str(tmp_path / "base")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    outcomes = {name: outcome for outcome, name in
                re.findall(r"^(PASSED|FAILED|SKIPPED)(?: \[\d+\])? test_suite\.py:{1,2}(?:\d+: )?(\w+)", output,
                           re.MULTILINE)}
    assert outcomes.get("test_marked_runs_elsewhere") == "PASSED", output
    assert outcomes.get("test_unmarked_runs_here") == "PASSED", output
    assert outcomes.get("test_marked_failure") == "FAILED" and "planted failure" in output, output
    assert "1 failed, 2 passed, 1 skipped" in output, output
    runs = dict(line.split() for line in pids.read_text().splitlines())
    parent = runs["unmarked"]
    assert runs["marked"] != parent  # another process
    assert done.returncode == 1
