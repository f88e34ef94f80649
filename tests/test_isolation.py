"""The isolation plugin (tests/isolation.py), on a tiny suite in a subprocess: tests marked
``isolated`` run in another interpreter (one per module, or their own with ``alone=True``), their
failures and skips come back as such, and unmarked tests run in the pytest process itself, first,
while the children work; a child's memory is listed for its own tests, not for the ones here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


MB = 2**20
HEAVY = 400 * MB

# test_light (unmarked) runs in the pytest process, before test_heavy although it comes later,
# while test_heavy's isolated child works: the child holds HEAVY bytes until test_light has seen
# them, so the parent samples its own test while the child is resident; only test_heavy may be
# listed with that memory.
AHEAD = {
    "test_heavy.py": f'''
import os, time
from pathlib import Path

import pytest

pytestmark = pytest.mark.isolated


def test_child_holds_memory_while_the_parent_works():
    block = bytearray({HEAVY})  # zero-filled: resident
    Path(os.environ["SIGNALS"], "held").write_text(str(os.getpid()))
    seen = Path(os.environ["SIGNALS"], "seen")
    deadline = time.time() + 30
    while not seen.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert seen.exists(), "the unmarked test did not run while this child ran"
''',
    "test_light.py": '''
import os, time
from pathlib import Path


def test_parent_runs_meanwhile():
    deadline = time.time() + 30
    held = Path(os.environ["SIGNALS"], "held")
    while not held.exists() and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert held.exists(), "the isolated child did not run while this test ran"
        time.sleep(0.5)  # the RSS sampler runs many times while the child holds its memory
    finally:
        Path(os.environ["SIGNALS"], "seen").write_text("")
''',
}


def _heaviest(output):
    """GiB per test from the RSS monitor's summary."""
    return {name: float(gib) for gib, name in re.findall(r"^\s+([\d.]+) GiB .*::(\w+)$", output, re.MULTILINE)}


@pytest.mark.slow
def test_children_run_ahead_and_their_memory_is_theirs(tmp_path):
    for name, text in AHEAD.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["rss_monitor", "isolation"]\n')
    (tmp_path / "signals").mkdir()
    env = {**os.environ, "PYTHONPATH": str(TESTS), "SIGNALS": str(tmp_path / "signals")}
    env.pop("POLYACT_ISOLATION_REPORT", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--isolated-jobs", "2",
                           "--max-rss-gb", "0", "test_heavy.py", "test_light.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "2 passed" in output, output
    peaks = _heaviest(output)
    assert peaks["test_child_holds_memory_while_the_parent_works"] > HEAVY / 2**30, output  # measured in the child
    assert peaks["test_parent_runs_meanwhile"] < 0.8 * HEAVY / 2**30, output  # the child's memory is not blamed here


ORDERED = '''
import os, time

import pytest

pytestmark = pytest.mark.isolated


def test_run():
    with open(os.environ["ORDER_FILE"], "a") as f:
        f.write(__name__ + "\\n")
    time.sleep({seconds})
'''


@pytest.mark.slow
def test_the_longest_child_of_the_previous_run_starts_first(tmp_path):
    (tmp_path / "test_brief.py").write_text(ORDERED.format(seconds=0))
    (tmp_path / "test_long.py").write_text(ORDERED.format(seconds=1.5))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["isolation"]\n')
    order = tmp_path / "order.txt"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ORDER_FILE": str(order)}
    env.pop("POLYACT_ISOLATION_REPORT", None)
    runs = []
    for _ in range(2):  # the first run has no durations: test order; the second starts the long one first
        done = subprocess.run([sys.executable, "-m", "pytest", "-v", "--isolated-jobs", "1"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append((order.read_text().split(), re.findall(r"^(test_\w+)\.py::test_run PASSED", done.stdout, re.M)))
        order.unlink()
    assert runs[0] == (["test_brief", "test_long"], ["test_brief", "test_long"])
    assert runs[1] == (["test_long", "test_brief"], ["test_long", "test_brief"])  # and they report in that order
