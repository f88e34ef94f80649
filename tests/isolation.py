"""pytest plugin: the ``isolated`` groups of tests, and the others, in fresh interpreters (pytest-isolated).

SEAL keeps every block it ever allocated in a process-wide memory pool, so a test that evaluates
a large plan leaves its process that much bigger for every test after it, whatever is freed.
Tests marked ``@pytest.mark.isolated`` (or a module with ``pytestmark = pytest.mark.isolated``)
therefore run in a process where no other isolated group runs: the module's isolated tests
together, and a test marked ``isolated(alone=True)`` by itself.

pytest-isolated does the work (``isolated_numprocesses`` in pyproject): one child ``python -m
pytest`` per group, two at a time, each test's reports (tracebacks, output, user properties) back
in this process. This plugin only tells it the groups, through its ``isolated(group=...)`` marker:

* an isolated group as above; the unmarked tests together in one more group, so they run in a
  child alongside the isolated ones (pytest-isolated would run them here only once every child
  has finished, leaving a core idle);
* the groups in the order that finishes soonest: the longest first, by how long each took in the
  previous run (pytest's cache), else the unmarked ones, then the isolated ones in test order.

In every process it checks the guarantee: a test of a second isolated group in the same process
fails (as happens with ``--no-isolation``, with more than one group).

``--durations`` tells each test's own time: pytest charges a module- or session-scoped fixture's
setup (a plan compiled for the module, a model trained for the session) to the setup of the first
test that asks for it, so a trivial test was listed with its module's wait. Here that setup time
is taken out of the test's setup duration (in the process that ran it; pytest-isolated forwards
the corrected report) and listed on its own, per fixture, under "shared fixtures". A shared
fixture's teardown still counts in the teardown of the test after which it ends.

Why not the others (tried with pytest 9.2): pytest-xdist keeps each worker for the whole run, so a
worker's next group starts with the pool of its last (``--max-worker-restart`` only replaces
crashed workers), a fresh worker collects the whole suite, and ``--dist loadgroup`` no longer
groups (xdist 3.8 renames node ids, which pytest 9.2 ignores: xdist #1386); pytest-forked and
pytest-isolate fork each test (module fixtures rebuilt per test) and fail every test on pytest 9.2.
"""
from __future__ import annotations

import math
import os
import time

import pytest

ISOLATED = "isolated:"  # the prefix of an isolated group's name
UNMARKED = "unmarked"  # the group of the other tests
DURATIONS = "polyact/group-seconds"  # pytest's cache: how long each group took
IN_CHILD = "PYTEST_RUNNING_IN_SUBPROCESS"  # pytest-isolated sets it in its children
_FIRST_ISOLATED = pytest.StashKey[str]()  # the isolated group this process has run
_GROUP_OF = pytest.StashKey[dict]()  # node id -> group, in the main process
SHARED = "shared fixture seconds"  # user property: {fixture: seconds} set up during this test's setup
_SHARED_SECONDS = pytest.StashKey[dict]()  # on the item being set up: fixture -> seconds
_setting_up: list[pytest.Item] = []  # the item whose setup runs now (fixtures see only their own node)


def _group(item: pytest.Item) -> str:
    marker = next((m for m in item.iter_markers("isolated") if "group" not in m.kwargs), None)
    if marker is None:
        return UNMARKED
    return ISOLATED + (item.nodeid if marker.kwargs.get("alone") else item.nodeid.split("::")[0])


@pytest.hookimpl(tryfirst=True)  # before pytest-isolated reads the groups; deselection keeps this order
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(IN_CHILD) == "1":
        return  # a child runs the tests it is given
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(_group(item), []).append(item)
    cache = getattr(config, "cache", None)
    before = cache.get(DURATIONS, {}) if cache is not None else {}
    order = sorted(groups, key=lambda group: (-before.get(group, math.inf), group != UNMARKED))
    config.stash[_GROUP_OF] = {}
    for group in order:
        for item in groups[group]:
            item.add_marker(pytest.mark.isolated(group=group), append=False)  # the closest: pytest-isolated's
            config.stash[_GROUP_OF][item.nodeid] = group
    items[:] = [item for group in order for item in groups[group]]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    """Fail a test of a second isolated group in this process; time the shared fixtures it sets up."""
    group = _group(item)
    first = item.config.stash.setdefault(_FIRST_ISOLATED, group) if group.startswith(ISOLATED) else group
    if first != group:
        pytest.fail(f"isolation: {group[len(ISOLATED):]} would run in the process that ran {first[len(ISOLATED):]} "
                    "(SEAL's memory pool keeps what that allocated): run with pytest-isolated's children "
                    "(no --no-isolation), or select one isolated group", pytrace=False)
    item.stash[_SHARED_SECONDS] = {}
    _setting_up.append(item)
    try:
        return (yield)
    finally:
        _setting_up.pop()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Time a module/session/package/class fixture's own setup (its dependencies are timed apart)."""
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        if fixturedef.scope != "function" and _setting_up:
            seconds = _setting_up[-1].stash[_SHARED_SECONDS]
            name = f"{fixturedef.scope} {fixturedef.argname}"
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    shared = item.stash.get(_SHARED_SECONDS, {}) if call.when == "setup" else {}
    if shared:
        report.duration = max(0.0, report.duration - sum(shared.values()))
        report.user_properties.append((SHARED, {k: round(v, 3) for k, v in shared.items()}))
    return report


class _Durations:
    """In the main process: how long each group's tests took, for the order of the next run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        group = self.config.stash.get(_GROUP_OF, {}).get(report.nodeid)
        shared = sum(sum(v.values()) for k, v in report.user_properties if k == SHARED)
        if group is not None:
            self.seconds[group] = self.seconds.get(group, 0.0) + report.duration + shared

    @pytest.hookimpl(trylast=True)  # after pytest's "slowest durations"
    def pytest_terminal_summary(self, terminalreporter) -> None:
        """Under --durations: the shared fixtures' setups, which no test's duration includes."""
        if self.config.option.durations is None:
            return
        rows = [(seconds, name, report.nodeid) for reports in terminalreporter.stats.values() for report in reports
                for key, value in getattr(report, "user_properties", ()) if key == SHARED
                for name, seconds in value.items() if seconds >= 0.005]
        if rows:
            terminalreporter.write_sep("=", "shared fixtures (set up once for a module or the session; in no test's "
                                            "duration above)")
            for seconds, name, nodeid in sorted(rows, reverse=True)[: self.config.option.durations or None]:
                terminalreporter.write_line(f"{seconds:.2f}s {name}, set up for {nodeid.split('::')[0]}")

    def pytest_sessionfinish(self) -> None:
        cache = getattr(self.config, "cache", None)
        if cache is not None and self.seconds:
            seconds = {group: round(value, 1) for group, value in self.seconds.items()}
            cache.set(DURATIONS, {**cache.get(DURATIONS, {}), **seconds})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "isolated(alone=False): run in a fresh interpreter with the module's other "
                                       "isolated tests (alone=True: by itself), no other group there: CKKS memory")
    if os.environ.get(IN_CHILD) != "1":
        config.pluginmanager.register(_Durations(config), "isolation-durations")
