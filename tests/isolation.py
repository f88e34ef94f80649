"""pytest plugin: run tests marked ``isolated`` in a fresh interpreter, ahead of time.

SEAL keeps every block it ever allocated in a process-wide memory pool, so a test that evaluates
a large plan leaves the test process that much bigger for every test after it, whatever is
freed. Tests marked ``@pytest.mark.isolated`` (or a module with ``pytestmark =
pytest.mark.isolated``) therefore run in a child ``python -m pytest`` (a fresh interpreter, not
a fork of this one): the selected isolated tests of one module share one child, and a test
marked ``isolated(alone=True)`` gets a child of its own. Each test's outcome comes back
individually.

The children do not wait for their turn: ``--isolated-jobs J`` (default: the usable CPUs, at
most 2) processes work at once, this one (while it runs unmarked tests) plus ``J - 1`` children,
or ``J`` children while this one waits for an outcome. The unmarked tests run first, in their
order, while the children run the isolated groups, the longest first (as long as each took in
the previous run, from pytest's cache); then the isolated tests report, in that order.
``--isolated-jobs 1`` runs each child only when its first test comes up.

Memory: each child's RSS monitor (:mod:`rss_monitor`) applies the limit test by test and reports
each test's peak, which the parent lists; the parent leaves a running child's process tree out
of the memory it attributes to its own tests. ``POLYACT_ISOLATION_REPORT`` tells a child where
to write its outcomes (and that it runs the tests in place).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

try:  # the memory of a child is accounted in the child, not in the test the parent runs meanwhile
    from rss_monitor import ACCOUNTED_ELSEWHERE
except ImportError:  # used without the RSS monitor
    ACCOUNTED_ELSEWHERE = set()

REPORT_VARIABLE = "POLYACT_ISOLATION_REPORT"
POLL_SECONDS = 0.05  # how often a waiting parent checks its children
DURATIONS = "polyact/isolated-seconds"  # pytest's cache: how long each group's child took
_SCHEDULER = pytest.StashKey["_Scheduler"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--isolated-jobs", type=int, default=None,
                     help="processes working at once on the isolated tests' children and the unmarked tests "
                          "(default: usable CPUs, at most 2; 1: each child runs when its first test comes up)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "isolated(alone=False): run in a fresh interpreter (one per module, or "
                                       "one for this test with alone=True): heavy CKKS memory")
    if os.environ.get(REPORT_VARIABLE):
        config.pluginmanager.register(_ChildRecorder(Path(os.environ[REPORT_VARIABLE]), config), "isolation-recorder")
        return
    jobs = config.getoption("--isolated-jobs", default=None)
    if jobs is None:
        jobs = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if jobs < 1:
        raise pytest.UsageError(f"--isolated-jobs must be at least 1, got {jobs}")
    config.stash[_SCHEDULER] = _Scheduler(config, jobs)
    config.pluginmanager.register(config.stash[_SCHEDULER], "isolation-scheduler")


class _ChildRecorder:
    """In a child: append each test's outcome (and the failure text), then its peak RSS, to the report file."""

    def __init__(self, path: Path, config: pytest.Config) -> None:
        self.path = path
        self.config = config

    def _write(self, entry: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or not report.passed:
            self._write({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                         "text": report.longreprtext[-20000:] if not report.passed else ""})

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        monitor = self.config.pluginmanager.get_plugin("rss-monitor-instance")
        usage = monitor.usage.get(nodeid) if monitor is not None else None
        if usage is not None:
            self._write({"nodeid": nodeid, "usage": [usage.peak, usage.children]})


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("isolated")
    if marker is None or os.environ.get(REPORT_VARIABLE):
        return None
    return item.nodeid if marker.kwargs.get("alone") else item.nodeid.split("::")[0]


class _Child:
    """One child ``python -m pytest`` running a group's selected tests; its output goes to a file."""

    def __init__(self, config: pytest.Config, members: list[str]) -> None:
        self.members = members
        self.started = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix="polyact-isolated-"))
        self.report = self.folder / "outcomes.jsonl"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", *members]
        limit = config.getoption("--max-rss-gb", default=None)
        if limit is not None:
            command += ["--max-rss-gb", str(limit)]
        with (self.folder / "output.txt").open("w") as log:
            self.process = subprocess.Popen(command, cwd=config.rootpath, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, REPORT_VARIABLE: str(self.report)})
        ACCOUNTED_ELSEWHERE.add(self.process.pid)

    def done(self) -> bool:
        return self.process.poll() is not None

    def collect(self, results: dict, usages: dict) -> None:
        """Outcomes and peaks by node id; a test without an outcome failed with the child's output."""
        ACCOUNTED_ELSEWHERE.discard(self.process.pid)
        self.seconds = time.monotonic() - self.started
        lines = self.report.read_text().splitlines() if self.report.exists() else []
        tail = (self.folder / "output.txt").read_text(errors="replace")[-20000:]
        shutil.rmtree(self.folder, ignore_errors=True)
        for entry in map(json.loads, lines):
            if "usage" in entry:
                usages[entry["nodeid"]] = tuple(entry["usage"])
                continue
            previous = results.get(entry["nodeid"])
            if previous is None or previous["outcome"] == "passed":
                results[entry["nodeid"]] = entry
        for nodeid in self.members:  # a child that died (killed, crashed) leaves its tests without outcome
            results.setdefault(nodeid, {"outcome": "failed", "text": f"no outcome from the isolated run (exit "
                                                                     f"code {self.process.returncode}):\n{tail}"})

    def stop(self) -> None:
        if not self.done():
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        ACCOUNTED_ELSEWHERE.discard(self.process.pid)
        shutil.rmtree(self.folder, ignore_errors=True)


class _Scheduler:
    """Starts the groups' children in test order, ``jobs`` processes at a time counting this one while it
    runs unmarked tests, and keeps every outcome by node id."""

    def __init__(self, config: pytest.Config, jobs: int) -> None:
        self.config = config
        self.jobs = jobs
        self.pending: dict[str, list[str]] = {}  # group -> its node ids, in the order the groups start
        self.running: dict[str, _Child] = {}
        self.results: dict[str, dict] = {}
        self.usages: dict[str, tuple[int, int]] = {}
        self.keys: dict[str, str] = {}  # group -> its key in the durations of earlier runs
        self.seconds: dict[str, float] = {}  # key -> how long its child took in this run

    @pytest.hookimpl(trylast=True)  # after the deselection (-m, -k, --deselect)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Unmarked tests first (this process runs them while the children work), then the isolated ones,
        by group, the longest in the previous run first (unknown ones before them): the last child to
        start is a short one, so the processes finish together."""
        groups: dict[str, list[pytest.Item]] = {}
        for item in items:
            group = _group(item)
            if group is not None:
                groups.setdefault(group, []).append(item)
        self.keys = {group: f"{group} [{len(members)} tests]" for group, members in groups.items()}
        cache = getattr(self.config, "cache", None)
        before = cache.get(DURATIONS, {}) if cache is not None else {}
        order = sorted(groups, key=lambda group: -before.get(self.keys[group], math.inf))
        self.pending = {group: [item.nodeid for item in groups[group]] for group in order}
        items[:] = [item for item in items if _group(item) is None] + [item for g in order for item in groups[g]]

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        """Around every test, outside the RSS monitor's measurement: start children while there is room."""
        self.fill(parent_busy=_group(item) is None)
        return (yield)

    def pytest_sessionfinish(self) -> None:
        """Remember how long each child took; end those still running (interrupted: ``-x``, Ctrl-C)."""
        self.stop()
        cache = getattr(self.config, "cache", None)
        if cache is not None and self.seconds:
            cache.set(DURATIONS, {**cache.get(DURATIONS, {}), **self.seconds})

    def _start(self, group: str) -> None:
        self.running[group] = _Child(self.config, self.pending.pop(group))

    def fill(self, parent_busy: bool) -> None:
        """Collect finished children and start the next groups while there is room."""
        for group, child in list(self.running.items()):
            if child.done():
                child.collect(self.results, self.usages)
                self.seconds[self.keys[group]] = round(child.seconds, 1)
                del self.running[group]
        while self.pending and len(self.running) < self.jobs - parent_busy:
            self._start(next(iter(self.pending)))

    def wait_for(self, group: str) -> None:
        """Block until ``group``'s child has finished, keeping the other slots busy meanwhile."""
        if group in self.pending:
            self._start(group)
        while group in self.running:
            self.fill(parent_busy=False)
            if group in self.running:
                time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        for child in self.running.values():
            child.stop()
        self.running.clear()


def _outcome(item: pytest.Item, group: str) -> None:
    scheduler = item.config.stash[_SCHEDULER]
    if item.nodeid not in scheduler.results:
        scheduler.wait_for(group)
    if item.nodeid in scheduler.usages:
        item.rss_usage_in_child = scheduler.usages[item.nodeid]
    entry = scheduler.results[item.nodeid]
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

