"""How many threads torch and BLAS use: chosen for the work and the cores this process may use.

torch starts with one intra-op thread per core. For a network as small as the digits CNN (24 k
multiply-adds per image, 1.5 M per batch of 64) a second thread has too little to do, and on a busy
machine it waits for a core while the first spins. ``python benchmarks/bench_threads.py`` (training
steps, batch 64, 1 and 2 threads interleaved) on the shared 2-core machine at 1-min load 6-8, wall
ms per step with 1 / 2 threads: digits MLP 12 / 148, digits CNN 16 / 274, digits32 CNN 136 / 862,
ResNet-20 at 3x32x32 2474 / 10013 (CPU ms 609 / 3015). A busy machine has no core to give, whatever
the network; an idle one gives extra threads to large layers only. So the choice is

    threads = clamp(floor(MACs per step / MACS_PER_THREAD), 1, free cores)

MACs per step = multiply-adds of the Conv/Linear layers for one sample x the batch size (found by
one forward pass with hooks); free cores = cores in this process's affinity mask
(``os.sched_getaffinity``) minus the 1-minute load average, at least 1. ``POLYACT_THREADS=N`` (or
the command's ``--threads N``) overrides the choice. :func:`use_threads` applies a count to torch
(``torch.set_num_threads``), to BLAS/OpenMP pools already loaded (threadpoolctl, if installed) and
to the environment that child processes inherit (``OMP_NUM_THREADS``, ...).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Sequence

ENV = "POLYACT_THREADS"
# one thread per this many multiply-adds per training step (one batch): the digits networks
# (<= 2.3 M per batch of 64) and the digits32 CNN (92 M) stay on 1 thread, ResNet-20 at 3x32x32
# (2.6 G) gets every free core. Not measured on idle cores (this project's machine is shared): a
# conservative guess, not a measured crossover
MACS_PER_THREAD = 100_000_000
_CHILD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def allowed_cores() -> int:
    """Cores this process may run on (its affinity mask; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_cores() -> int:
    """Allowed cores not busy by the 1-minute load average (at least 1)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system
        load = 0.0
    return max(1, allowed_cores() - int(load))


def requested_threads(value: int | str | None = None) -> int | None:
    """The thread count asked for: ``value`` (``--threads``), else ``$POLYACT_THREADS``, else None."""
    if value is None:
        value = os.environ.get(ENV) or None
    if value is None:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"thread count {value!r} (--threads or ${ENV}) must be a whole number >= 1")
    return count


def macs_per_sample(model: Any, input_shape: Sequence[int]) -> int:
    """Multiply-adds of ``model``'s Conv and Linear layers for one input of ``input_shape``, counted
    by one forward pass of zeros through a copy (the model's own counters and statistics are left
    alone); 0 where that pass fails (the work is then taken to be small)."""
    import copy

    import torch
    from torch import nn

    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            kernel = 1
            for k in module.kernel_size:
                kernel *= k
            total += output.numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    probe = copy.deepcopy(model).eval()
    for module in probe.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            module.register_forward_hook(count)
    parameter = next(probe.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a PANN's out-of-range warning on zeros
            probe(torch.zeros(1, *input_shape, dtype=dtype))
    except Exception:  # an input the model cannot take: count it as small work, never fail the caller
        return 0
    return total


def choose_threads(model: Any = None, input_shape: Sequence[int] | None = None, batch_size: int = 64,
                   threads: int | str | None = None) -> int:
    """The thread count for training / evaluating ``model`` on batches of ``batch_size`` inputs.

    ``threads`` (``--threads``) or ``$POLYACT_THREADS`` wins; without a model the work is taken
    to be small (1 thread)."""
    asked = requested_threads(threads)
    if asked is not None:
        return asked
    if model is None or input_shape is None:
        return 1
    work = macs_per_sample(model, input_shape) * batch_size
    return max(1, min(free_cores(), work // MACS_PER_THREAD))


def use_threads(count: int) -> int:
    """Run torch, the loaded BLAS/OpenMP pools and later child processes on ``count`` threads.

    torch is not imported for this (``polyact serve`` may never need it): if it is not loaded
    yet, it reads ``OMP_NUM_THREADS`` when it is (at most one thread per physical core then)."""
    for variable in _CHILD_VARIABLES:
        os.environ[variable] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: scikit-learn brings it
        return count
    threadpool_limits(count)  # not as a context manager: the limit stays
    return count


def configure_threads(model: Any = None, input_shape: Sequence[int] | None = None, batch_size: int = 64,
                      threads: int | str | None = None) -> int:
    """:func:`choose_threads`, then :func:`use_threads`; returns the count. Call it at an entry point."""
    return use_threads(choose_threads(model, input_shape, batch_size, threads))
