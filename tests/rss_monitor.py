"""pytest plugin: the peak resident memory (RSS) of every test, a limit on it, and the heaviest.

The machine running the suite is small and shared, so a test that holds gigabytes can get the
whole run killed by the kernel. For each test (setup, call and teardown together) the plugin
records the peak RSS of the process running it plus all that process's descendants, fails a test
whose peak exceeds the limit, and lists the heaviest tests in the terminal summary.

Why our own: no maintained plugin does this. pytest-memray's ``limit_memory`` counts the heap
allocations of the test function's call in this process only (no fixtures, no child processes:
the notebook kernels, CLI runs, process pools and Ray workers that several tests start), and
slows the run by tracing every allocation; pytest-isolate's ``--isolate-mem-limit`` is an
``RLIMIT_DATA`` on a fork of each test (virtual size, per process: torch's reservations count,
children do not). RSS of the whole process tree is what the kernel kills for.

How a peak is attributed to a test (RSS is a process-wide, monotonic high-water mark):

* this process: the kernel's high-water mark ``VmHWM`` is reset before each test by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux), so after the test it is that test's peak;
* descendants (pool workers, Ray, subprocesses): a thread samples the summed RSS of the
  process tree every ``--rss-interval`` seconds, and a child that exited during the test is
  caught by ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` rising (its largest waited-for child).

The peak is the largest of: the process's high-water mark, the sampled tree total, and the
process's RSS at the end plus the largest exited child. Under pytest-xdist each worker measures
and limits its own tests (the workers are siblings, so one never counts another's memory) and
sends each test's peak with its report (``user_properties``), from which the controller lists
the heaviest. Options: ``--max-rss-gb`` (default: the environment variable
``POLYACT_MAX_RSS_GB``, else the ``max_rss_gb`` ini value, else 4; 0 turns the limit off),
``--rss-top`` (how many tests the summary lists, default 10).
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
PEAK, CHILDREN = "rss_peak_bytes", "rss_children_bytes"  # the report's user_properties


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
    """RSS of ``process`` and the summed RSS of its live descendants, in bytes."""
    own = process.memory_info().rss
    children = 0
    for child in process.children(recursive=True):
        try:
            children += child.memory_info().rss
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
        try:
            own, children = _tree_rss(self.process)
        except psutil.Error:
            return
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
        self.usage: dict[str, Usage] = {}  # by node id, from the reports (this process's or a worker's)
        self.resettable = _reset_high_water_mark()
        self.exited_before = _largest_exited_child()

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
        self.resettable = self.resettable and _reset_high_water_mark()
        self.exited_before = _largest_exited_child()
        self.sampler.start()
        try:
            return (yield)
        finally:
            self.sampler.stop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        usage = self._current()
        report.user_properties += [(PEAK, usage.peak), (CHILDREN, usage.children)]
        if self.limit is not None and usage.peak > self.limit and report.passed and not hasattr(item, "_rss_failed"):
            item._rss_failed = True  # report the breach once, in the phase where it is first seen
            report.outcome = "failed"
            report.longrepr = (
                f"peak RSS {usage.peak / GB:.2f} GiB (of which child processes {usage.children / GB:.2f} GiB) "
                f"exceeds the limit of {self.limit / GB:.2f} GiB during {report.when}: make the test lighter "
                "(smaller data, models or CKKS parameters), or raise --max-rss-gb if the machine allows"
            )
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Keep each test's largest peak over its phases (reports of xdist's workers come here too)."""
        properties = dict(p for p in report.user_properties if p[0] in (PEAK, CHILDREN))
        if PEAK in properties:
            previous = self.usage.get(report.nodeid)
            if previous is None or properties[PEAK] > previous.peak:
                self.usage[report.nodeid] = Usage(properties[PEAK], properties.get(CHILDREN, 0))

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
