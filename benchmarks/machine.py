"""What each benchmark prints beside its figures: wall time, CPU seconds and the load average.

``Meter()`` starts the clocks; ``meter.figures()`` gives wall seconds, CPU seconds (this process and
its finished children, user + system) and the 1-minute load average at start and now, and
``meter.line()`` the same as one line to print. CPU seconds do not grow with the machine's load
the way wall time does, so they are the figure to compare across runs.
"""
from __future__ import annotations

import os
import resource
import time


def cpu_seconds() -> float:
    """User + system seconds of this process and of its children that have finished."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Meter:
    """Wall and CPU clocks and the load average from construction on."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.load = time.perf_counter(), cpu_seconds(), os.getloadavg()

    def figures(self) -> dict[str, float]:
        load = os.getloadavg()
        return {"wall_s": round(time.perf_counter() - self.wall, 2), "cpu_s": round(cpu_seconds() - self.cpu, 2),
                "load_1min_start": round(self.load[0], 2), "load_1min_end": round(load[0], 2),
                "load_5min_end": round(load[1], 2), "cores": len(os.sched_getaffinity(0))}

    def line(self) -> str:
        f = self.figures()
        return (f"wall {f['wall_s']:.1f} s, CPU {f['cpu_s']:.1f} s, 1-min load {f['load_1min_start']:.2f} at start, "
                f"{f['load_1min_end']:.2f} at end (5-min {f['load_5min_end']:.2f}), {f['cores']} cores")


def start(threads: int | None = None) -> Meter:
    """A benchmark's start: torch / BLAS threads from ``threads``, else ``$POLYACT_THREADS``, else 1
    (:func:`polyact.threads.configure_threads`), then a :class:`Meter`."""
    from polyact.threads import configure_threads

    configure_threads(threads=threads)
    return Meter()


def finish(meter: Meter, figures: object) -> str:
    """Print the meter's line and return the closing JSON line: ``{"rows": figures, "machine": ...}``."""
    import json

    print(meter.line())
    return json.dumps({"rows": figures, "machine": meter.figures()})
