"""The isolation plugin (tests/isolation.py) over pytest-isolated, on tiny suites in a subprocess:
each isolated group (a module's marked tests, or one test with ``alone=True``) runs in a fresh
interpreter, the unmarked tests in one more, failures and skips come back per test with their
tracebacks, a second isolated group in one process fails, a child's memory is listed for its own
tests, and the groups that took longest in the previous run start first."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# pytest-isolated tells its children by these (this test may run in one): not the nested runs'
CHILD_VARIABLES = ("PYTEST_RUNNING_IN_SUBPROCESS", "PYTEST_SUBPROCESS_REPORT_PATH")

RECORD = '''
import os

import pytest


def _record(tag):
    with open(os.environ["PID_FILE"], "a") as f:
        f.write(f"{tag} {os.getpid()} {os.getppid()}\\n")
'''

SUITE = {
    "test_one.py": RECORD + '''
pytestmark = pytest.mark.isolated


def test_one_a():
    _record("one_a")


def test_one_b():
    _record("one_b")


def test_one_failure():
    _record("one_failure")
    assert 1 + 1 == 3, "planted failure"


def test_one_skip():
    pytest.skip("nothing to do")
''',
    "test_two.py": RECORD + '''
pytestmark = pytest.mark.isolated


def test_two():
    _record("two")


@pytest.mark.isolated(alone=True)
def test_two_alone():
    _record("alone")
''',
    "test_three.py": RECORD + '''
@pytest.mark.isolated
def test_three():
    _record("three")


def test_three_unmarked():
    _record("unmarked")
''',
    "test_plain.py": RECORD + '''
def test_plain():
    _record("plain")
''',
}


def _run(tmp_path, *args, env=None, suite=SUITE):
    for name, text in suite.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["rss_monitor", "isolation"]\n')
    environment = {key: value for key, value in os.environ.items() if not key.startswith(CHILD_VARIABLES)}
    environment.update(PYTHONPATH=str(TESTS), PID_FILE=str(tmp_path / "pids.txt"), **(env or {}))
    done = subprocess.run([sys.executable, "-m", "pytest", "-rA", *args], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def _outcomes(output):
    """Outcome per test from pytest's ``-rA`` short summary."""
    return {name: outcome for outcome, name in
            re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR)(?: \[\d+\])? test_\w+\.py:{1,2}(?:\d+: )?(\w+)", output,
                       re.MULTILINE)}


def test_each_isolated_group_runs_in_a_fresh_interpreter_and_keeps_its_outcomes(tmp_path):
    code, output = _run(tmp_path, "-q", "-p", "no:cacheprovider", "--isolated-numprocesses", "2")
    outcomes = _outcomes(output)
    assert code == 1 and "1 failed, 7 passed, 1 skipped" in output, output
    assert outcomes["test_one_failure"] == "FAILED" and "nothing to do" in output, output  # the skip and its reason
    # the failure comes back with its traceback: the failing line and the assertion message
    assert ">       assert 1 + 1 == 3, \"planted failure\"" in output and "AssertionError: planted failure" in output
    records = [line.split() for line in (tmp_path / "pids.txt").read_text().splitlines()]
    runs = {tag: pid for tag, pid, _ in records}
    assert runs["one_a"] == runs["one_b"] == runs["one_failure"]  # a module's isolated tests share their process
    assert runs["plain"] == runs["unmarked"]  # the unmarked tests share one
    processes = {"one": runs["one_a"], "two": runs["two"], "alone": runs["alone"], "three": runs["three"],
                 "unmarked": runs["plain"]}
    assert len(set(processes.values())) == 5, runs  # and no other group runs there
    main = str(os.getpid())  # started the main pytest process, whose children run the tests: none runs in it
    assert all(parent != main for _, _, parent in records), records


def test_without_fresh_interpreters_a_second_isolated_group_fails(tmp_path):
    code, output = _run(tmp_path, "-q", "-p", "no:cacheprovider", "--no-isolation", "test_one.py", "test_two.py")
    outcomes = _outcomes(output)
    assert code == 1, output
    assert outcomes["test_one_a"] == "PASSED" and outcomes["test_two"] == "ERROR", output
    assert outcomes["test_two_alone"] == "ERROR", output
    assert "isolation: test_two.py would run in the process that ran test_one.py" in output, output


MB = 2**20
HEAVY = 400 * MB

# the two tests run at once, in two children: test_heavy holds HEAVY bytes until test_light has seen
# them, so the light test is measured while the other child is resident; only test_heavy may be
# listed with that memory (measured in its child, listed by the main process)
AHEAD = {
    "test_heavy.py": f'''
import os, time
from pathlib import Path

import pytest

pytestmark = pytest.mark.isolated


def test_child_holds_memory_while_the_other_works():
    block = bytearray({HEAVY})  # zero-filled: resident
    Path(os.environ["SIGNALS"], "held").write_text(str(os.getpid()))
    seen = Path(os.environ["SIGNALS"], "seen")
    deadline = time.time() + 60
    while not seen.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert seen.exists(), "the light test did not run meanwhile"
''',
    "test_light.py": '''
import os, time
from pathlib import Path


def test_other_child_runs_meanwhile():
    deadline = time.time() + 60
    held = Path(os.environ["SIGNALS"], "held")
    while not held.exists() and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert held.exists(), "the heavy test did not run meanwhile"
        time.sleep(0.5)  # the RSS sampler runs many times while the other worker holds its memory
    finally:
        Path(os.environ["SIGNALS"], "seen").write_text("")
''',
}


def _heaviest(output):
    """GiB per test from the RSS monitor's summary."""
    return {name: float(gib) for gib, name in re.findall(r"^\s+([\d.]+) GiB .*::(\w+)$", output, re.MULTILINE)}


@pytest.mark.slow
def test_a_childs_memory_is_listed_for_its_own_tests(tmp_path):
    (tmp_path / "signals").mkdir()
    code, output = _run(tmp_path, "-q", "-p", "no:cacheprovider", "--isolated-numprocesses", "2",
                        "--max-rss-gb", "0", env={"SIGNALS": str(tmp_path / "signals")}, suite=AHEAD)
    assert code == 0 and "2 passed" in output, output
    peaks = _heaviest(output)
    assert peaks["test_child_holds_memory_while_the_other_works"] > HEAVY / 2**30, output
    assert peaks["test_other_child_runs_meanwhile"] < 0.8 * HEAVY / 2**30, output


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
def test_the_longest_group_of_the_previous_run_starts_first(tmp_path):
    suite = {"test_brief.py": ORDERED.format(seconds=0), "test_long.py": ORDERED.format(seconds=1.5)}
    order = tmp_path / "order.txt"
    runs = []
    for _ in range(2):  # the first run has no durations: test order; the second starts the long one first
        code, output = _run(tmp_path, "-q", "--isolated-numprocesses", "1", env={"ORDER_FILE": str(order)},
                            suite=suite)
        assert code == 0, output
        runs.append(order.read_text().split())
        order.unlink()
    assert runs == [["test_brief", "test_long"], ["test_long", "test_brief"]]


def test_the_suite_runs_its_groups_two_at_a_time():
    """The README's plain ``python -m pytest`` runs the groups as above, two children at a time."""
    options = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["isolated_numprocesses"] == "2" and float(options["isolated_timeout"]) >= 1800
    conftest = (TESTS / "conftest.py").read_text()
    assert re.search(r"pytest_plugins = \[.*\"isolation\"", conftest)


SHARED_FIXTURE = '''
import time

import pytest

pytestmark = pytest.mark.isolated


@pytest.fixture(scope="module")
def compiled():
    time.sleep(1.5)  # a plan compiled once for the module


def test_trivial(compiled):
    pass


def test_own_work(compiled):
    time.sleep(0.4)
'''


@pytest.mark.slow  # two pytest runs with children: about 20 s
@pytest.mark.parametrize("isolation", [[], ["--no-isolation"]])
def test_durations_give_each_test_its_own_time_and_shared_fixtures_apart(tmp_path, isolation):
    code, output = _run(tmp_path, "-q", "-p", "no:cacheprovider", "--durations=0", "--durations-min=0", *isolation,
                        suite={"test_shared.py": SHARED_FIXTURE})
    assert code == 0, output
    seconds = {(when, name): float(s) for s, when, name in
               re.findall(r"^([\d.]+)s (setup|call|teardown) +test_shared\.py::(\w+)$", output, re.MULTILINE)}
    assert seconds[("setup", "test_trivial")] < 0.3, output  # not the module fixture's 1.5 s
    assert 0.4 <= seconds[("call", "test_own_work")] < 1.0, output
    shared = re.search(r"^([\d.]+)s module compiled, set up for test_shared\.py$", output, re.MULTILINE)
    assert shared and 1.5 <= float(shared.group(1)) < 2.5, output
