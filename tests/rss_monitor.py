"""pytest plugin: the peak resident memory (RSS) of every test, a limit on it, and the heaviest.

The machine running the suite is small and shared, so a test that holds gigabytes can get the
whole run killed by the kernel. For each test (setup, call and teardown together) the plugin
records the peak RSS of this process plus all its descendants, fails a test whose peak exceeds
the limit, and lists the heaviest tests in the terminal summary.

How a peak is attributed to a test (RSS is a process-wide, monotonic high-water mark):

* this process: the kernel's high-water mark ``VmHWM`` is reset before each test by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux), so after the test it is that test's peak;
* descendants (pool workers, Ray, subprocesses): a thread samples the summed RSS of the
  process tree every ``--rss-interval`` seconds, and a child that exited during the test is
  caught by ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` rising (its largest waited-for child).

The peak is the largest of: the process's high-water mark, the sampled tree total, and the
process's RSS at the end plus the largest exited child. A child whose pid is in
:data:`ACCOUNTED_ELSEWHERE` (an isolated run of :mod:`isolation`, which may work while other
tests run here) is left out with its descendants; an isolated test's peak is the one its own
interpreter measured (``item.rss_usage_in_child``), and the limit is applied there. Options: ``--max-rss-gb`` (default: the
environment variable ``POLYACT_MAX_RSS_GB``, else the ``max_rss_gb`` ini value, else 4; 0 turns
the limit off), ``--rss-top`` (how many tests the summary lists, default 10).
"""
from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass

import psutil
import pytest

GB = 1024**3
DEFAULT_LIMIT_GB = 4.0
CLEAR_REFS = "/proc/self/clear_refs"
# pids of child processes whose trees measure themselves (tests/isolation.py's children, each with
# its own monitor): left out of the tests that run here meanwhile
ACCOUNTED_ELSEWHERE: set[int] = set()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rss", "peak resident memory per test")
    group.addoption("--max-rss-gb", type=float, default=None,
                    help="fail a test whose peak RSS (process + children) exceeds this many GiB; 0: no limit "
                         "(default: $POLYACT_MAX_RSS_GB, else ini max_rss_gb, else 4)")
    group.addoption("--rss-top", type=int, default=10, help="list this many heaviest tests in the summary")
    group.addoption("--rss-interval", type=float, default=0.05, help="seconds between samples of the process tree")
    parser.addini("max_rss_gb", "default of --max-rss-gb", default=str(DEFAULT_LIMIT_GB))


def _limit_gb(config: pytest.Config) -> float:
    value = config.getoption("--max-rss-gb")
    if value is None:
        value = os.environ.get("POLYACT_MAX_RSS_GB") or config.getini("max_rss_gb")
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(f"max RSS must be a number of GiB, got {value!r}") from None


def _high_water_mark() -> int | None:
    """This process's peak RSS in bytes since the last reset (``VmHWM``), None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open(CLEAR_REFS, "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _largest_exited_child() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB


def _tree_rss(process: psutil.Process) -> tuple[int, int]:
    """RSS of ``process`` and the summed RSS of its live descendants, in bytes, leaving out the
    process trees rooted at :data:`ACCOUNTED_ELSEWHERE`."""
    own = process.memory_info().rss
    children = 0
    stack = process.children()
    while stack:
        child = stack.pop()
        if child.pid in ACCOUNTED_ELSEWHERE:
            continue
        try:
            children += child.memory_info().rss
            stack.extend(child.children())
        except psutil.Error:  # exited between listing and reading
            pass
    return own, children


class _Sampler:
    """Samples the process tree's RSS in a thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, interval: float) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_children = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        own, children = _tree_rss(self.process)
        self.peak = max(self.peak, own + children)
        self.peak_children = max(self.peak_children, children)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.peak = self.peak_children = 0
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


@dataclass
class Usage:
    """One test's peak RSS (bytes), and the part of it in child processes."""

    peak: int
    children: int


class RssMonitor:
    """Measures every test's peak RSS, fails those over the limit, lists the heaviest."""

    def __init__(self, limit_gb: float, top: int, interval: float) -> None:
        self.limit = int(limit_gb * GB) if limit_gb > 0 else None
        self.top = top
        self.sampler = _Sampler(interval)
        self.usage: dict[str, Usage] = {}
        self.resettable = _reset_high_water_mark()

    def _begin(self) -> None:
        self.resettable = self.resettable and _reset_high_water_mark()
        self.exited_before = _largest_exited_child()
        self.sampler.start()

    def _current(self) -> Usage:
        """The peak so far in the running test."""
        own, _ = _tree_rss(self.sampler.process)
        exited = _largest_exited_child()
        exited = exited if exited > self.exited_before else 0
        hwm = _high_water_mark() if self.resettable else None
        peak = max(self.sampler.peak, hwm or 0, own + exited)
        return Usage(peak, max(self.sampler.peak_children, exited))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        self._begin()
        try:
            return (yield)
        finally:
            self.sampler.stop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if getattr(item, "rss_checked_in_child", False):  # an isolated test (tests/isolation.py): its own
            measured = getattr(item, "rss_usage_in_child", None)  # interpreter measures it and applies the limit
            if measured is not None:
                self.usage[item.nodeid] = Usage(*measured)
            return report
        usage = self._current()
        previous = self.usage.get(item.nodeid)
        if previous is None or usage.peak > previous.peak:
            self.usage[item.nodeid] = usage
        if self.limit is not None and usage.peak > self.limit and report.passed and not hasattr(item, "_rss_failed"):
            item._rss_failed = True  # report the breach once, in the phase where it is first seen
            report.outcome = "failed"
            report.longrepr = (
                f"peak RSS {usage.peak / GB:.2f} GiB (of which child processes {usage.children / GB:.2f} GiB) "
                f"exceeds the limit of {self.limit / GB:.2f} GiB during {report.when}: make the test lighter "
                "(smaller data, models or CKKS parameters), or raise --max-rss-gb if the machine allows"
            )
        return report

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.usage or self.top <= 0:
            return
        heaviest = sorted(self.usage.items(), key=lambda kv: kv[1].peak, reverse=True)[: self.top]
        limit = f"limit {self.limit / GB:.2f} GiB" if self.limit else "no limit"
        terminalreporter.write_sep("=", f"heaviest tests by peak RSS, process + children ({limit})")
        for nodeid, usage in heaviest:
            terminalreporter.write_line(f"{usage.peak / GB:8.2f} GiB  (children {usage.children / GB:5.2f})  {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    monitor = RssMonitor(_limit_gb(config), config.getoption("--rss-top"), config.getoption("--rss-interval"))
    config.pluginmanager.register(monitor, "rss-monitor-instance")
