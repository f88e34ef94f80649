"""pytest plugin: run tests marked ``isolated`` in a fresh interpreter.

SEAL keeps every block it ever allocated in a process-wide memory pool, so a test that evaluates
a large plan leaves the test process that much bigger for every test after it, whatever is
freed. Tests marked ``@pytest.mark.isolated`` (or a module with ``pytestmark =
pytest.mark.isolated``) therefore run in a child ``python -m pytest`` (a fresh interpreter, not
a fork of this one): the selected isolated tests of one module share one child, and a test
marked ``isolated(alone=True)`` gets a child of its own. Each test's outcome comes back
individually. The per-test RSS monitor (:mod:`rss_monitor`) runs in the child and applies the
limit there, test by test; the parent lists the child's peak but does not add its own memory.
``POLYACT_ISOLATION_REPORT`` tells a child where to
write its outcomes (and that it runs the tests in place).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPORT_VARIABLE = "POLYACT_ISOLATION_REPORT"
_RESULTS = pytest.StashKey[dict]()  # node id -> outcome of its isolated run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "isolated(alone=False): run in a fresh interpreter (one per module, or "
                                       "one for this test with alone=True): heavy CKKS memory")
    config.stash[_RESULTS] = {}
    if os.environ.get(REPORT_VARIABLE):
        config.pluginmanager.register(_ChildRecorder(Path(os.environ[REPORT_VARIABLE])), "isolation-recorder")


class _ChildRecorder:
    """In a child: append each test's outcome (and the failure text) to the report file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or not report.passed:
            entry = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                     "text": report.longreprtext[-20000:] if not report.passed else ""}
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("isolated")
    if marker is None or os.environ.get(REPORT_VARIABLE):
        return None
    return item.nodeid if marker.kwargs.get("alone") else str(item.path)


def _run_children(item: pytest.Item, group: str) -> None:
    """Run every selected test of ``group`` in one child and keep the outcomes by node id."""
    members = [i.nodeid for i in item.session.items if _group(i) == group]
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "outcomes.jsonl"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", *members]
        limit = item.config.getoption("--max-rss-gb", default=None)
        if limit is not None:
            command += ["--max-rss-gb", str(limit)]
        done = subprocess.run(command, cwd=item.config.rootpath, capture_output=True, text=True,
                              env={**os.environ, REPORT_VARIABLE: str(report)})
        entries = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    results = item.config.stash[_RESULTS]
    for entry in entries:
        previous = results.get(entry["nodeid"])
        if previous is None or previous["outcome"] == "passed":
            results[entry["nodeid"]] = entry
    tail = (done.stdout + done.stderr)[-20000:]
    for nodeid in members:  # a child that died (killed, crashed) leaves its tests without outcome
        results.setdefault(nodeid, {"outcome": "failed", "text": f"no outcome from the isolated run "
                                                                 f"(exit code {done.returncode}):\n{tail}"})


def _outcome(item: pytest.Item, group: str) -> None:
    results = item.config.stash[_RESULTS]
    if item.nodeid not in results:
        _run_children(item, group)
    entry = results[item.nodeid]
    if entry["outcome"] == "skipped":
        pytest.skip(f"skipped in the isolated run: {entry['text'].strip()[-300:]}")
    if entry["outcome"] == "failed":
        pytest.fail(f"failed in the isolated run ({entry.get('when', 'call')}):\n{entry['text']}", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    group = _group(item)
    if group is None:
        return None
    ihook = item.ihook
    item.rss_checked_in_child = True  # the child's RSS monitor applies the limit to each test
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for when, run in (("setup", lambda: None), ("call", lambda: _outcome(item, group)), ("teardown", lambda: None)):
        call = pytest.CallInfo.from_call(run, when)
        ihook.pytest_runtest_logreport(report=ihook.pytest_runtest_makereport(item=item, call=call))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
