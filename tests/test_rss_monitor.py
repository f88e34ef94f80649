"""The per-test peak RSS limit (tests/rss_monitor.py), run on tiny suites in a subprocess with a
lowered limit: heavy tests fail whether the memory is in the test's process or in a child, in the
pytest process or in pytest-isolated's children, a light test after a heavy one is not blamed for it,
and the summary lists the heaviest."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
MB = 2**20
# pytest-isolated tells its children by these (this test may run in one): not the nested runs'
CHILD_VARIABLES = ("PYTEST_RUNNING_IN_SUBPROCESS", "PYTEST_SUBPROCESS_REPORT_PATH")

SUITE = f'''
import subprocess, sys, time

HEAVY = {400 * MB}


def test_allocates_and_frees_at_once():
    block = bytearray(HEAVY)  # zero-filled: resident
    del block


def test_light_after_heavy():
    assert sum(range(1000)) == 499500


def test_exited_child_allocates():
    subprocess.run([sys.executable, "-c", f"b = bytearray({{HEAVY}}); print(len(b))"], check=True,
                   capture_output=True, timeout=60)


def test_live_child_allocates():
    code = f"b = bytearray({{HEAVY}}); print('ready', flush=True); import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the child is sampled while it lives; it is never waited for here
    finally:
        child.kill()
'''


def _run(tmp_path, *args, env=None):
    (tmp_path / "test_suite.py").write_text(SUITE)
    environment = {k: v for k, v in os.environ.items() if k != "POLYACT_MAX_RSS_GB" and not k.startswith(CHILD_VARIABLES)}
    environment.update(PYTHONPATH=str(TESTS), **(env or {}))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "rss_monitor", "-p", "no:cacheprovider", "-rA", "-q",
         "test_suite.py", *args],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _outcomes(output):
    """Outcome per test from pytest's ``-rA`` short summary."""
    return {name: outcome for outcome, name in re.findall(r"^(PASSED|FAILED|ERROR) test_suite\.py::(\w+)", output, re.MULTILINE)}


def _peaks(output):
    """GiB per test from the summary lines ``  0.42 GiB  (children  0.38)  test_suite.py::name``."""
    return {name: (float(peak), float(children)) for peak, children, name in
            re.findall(r"^\s*([\d.]+) GiB\s+\(children\s+([\d.]+)\)\s+test_suite\.py::(\w+)", output, re.MULTILINE)}


@pytest.mark.parametrize("isolated", [[], ["--isolated"]])  # here; each in a child, listed here
def test_tests_over_the_limit_fail_and_the_summary_lists_them(tmp_path, isolated):
    code, output = _run(tmp_path, "--max-rss-gb", "0.3", *isolated)
    outcomes = _outcomes(output)
    assert code == 1, output
    assert outcomes == {"test_allocates_and_frees_at_once": "FAILED", "test_light_after_heavy": "PASSED",
                        "test_exited_child_allocates": "FAILED", "test_live_child_allocates": "FAILED"}, output
    # each breach is reported once, in the phase where it is first seen (the failure sections;
    # the short summary repeats them, untruncated when CI is set)
    assert len(re.findall(r"^peak RSS .* exceeds the limit of 0\.30 GiB", output, re.MULTILINE)) == 3, output
    peaks = _peaks(output)
    assert set(peaks) == set(outcomes)
    for heavy in ("test_allocates_and_frees_at_once", "test_exited_child_allocates", "test_live_child_allocates"):
        assert peaks[heavy][0] >= 0.39  # 400 MiB were resident
    assert peaks["test_light_after_heavy"][0] < 0.3  # the previous test's peak is not carried over
    assert peaks["test_exited_child_allocates"][1] >= 0.39 and peaks["test_live_child_allocates"][1] >= 0.39
    assert peaks["test_allocates_and_frees_at_once"][1] < 0.1


@pytest.mark.slow  # two pytest runs in fresh interpreters: seconds
def test_the_limit_comes_from_the_environment_and_0_turns_it_off(tmp_path):
    code, output = _run(tmp_path, "-k", "frees or light", env={"POLYACT_MAX_RSS_GB": "0.3"})
    assert code == 1 and _outcomes(output)["test_allocates_and_frees_at_once"] == "FAILED", output
    code, output = _run(tmp_path, "-k", "frees or light", env={"POLYACT_MAX_RSS_GB": "0"})
    assert code == 0 and "no limit" in output, output
    code, output = _run(tmp_path, "-k", "frees", "--rss-top", "0")
    assert code == 0 and "GiB" not in output, output  # under the default 4 GiB, no listing asked
    code, output = _run(tmp_path, "--max-rss-gb", "lots")
    assert code != 0 and "lots" in output


def test_this_suite_runs_under_a_4_gib_limit(request):
    monitor = request.config.pluginmanager.get_plugin("rss-monitor-instance")
    assert monitor is not None and monitor.limit is not None
    if request.config.getoption("--max-rss-gb") is None and "POLYACT_MAX_RSS_GB" not in os.environ:
        assert monitor.limit == 4 * 2**30
