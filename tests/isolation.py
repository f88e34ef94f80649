"""pytest plugin: run tests marked ``@pytest.mark.isolated`` in a fresh interpreter.

SEAL keeps every block it ever allocated in a process-wide memory pool, so a test that evaluates
a large plan leaves the test process that much bigger for every test after it. A test marked
``isolated`` therefore runs as ``python -m pytest NODEID`` in a child process (a fresh
interpreter, not a fork of this one): its memory is returned when the child exits, and the
per-test RSS monitor (:mod:`rss_monitor`) still measures the child as this test's children.
The child's output is shown when it fails. ``POLYACT_IN_ISOLATION`` marks the child, which runs
the test in place.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD_FLAG = "POLYACT_IN_ISOLATION"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "isolated: run this test in a fresh interpreter (heavy CKKS memory)")


def _run_child(item: pytest.Item) -> None:
    """Run ``item`` in a fresh interpreter; raise with the child's output unless it passed."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", item.nodeid]
    limit = item.config.getoption("--max-rss-gb", default=None)
    if limit is not None:
        command += ["--max-rss-gb", str(limit)]
    done = subprocess.run(command, cwd=item.config.rootpath, env={**os.environ, CHILD_FLAG: "1"},
                          capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode == 0 and " skipped" in summary and " passed" not in summary:
        pytest.skip(f"skipped in its isolated run: {summary}")
    if done.returncode != 0:
        pytest.fail(f"the isolated run of {item.nodeid} failed ({summary}):\n{(done.stdout + done.stderr)[-20000:]}",
                    pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if item.get_closest_marker("isolated") is None or os.environ.get(CHILD_FLAG):
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for when, run in (("setup", lambda: None), ("call", lambda: _run_child(item)), ("teardown", lambda: None)):
        call = pytest.CallInfo.from_call(run, when)
        ihook.pytest_runtest_logreport(report=ihook.pytest_runtest_makereport(item=item, call=call))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
