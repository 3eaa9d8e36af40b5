"""How much of the machine a step takes: threads per step, steps at once, training slots.

Measured on a 2-core machine (LSTM 64x2, Alpha360, one epoch of 37,600 samples): 10.5 s with two
torch threads and 15.8 s with one when the machine is idle, but 37.4 s vs 25.7 s beside a
two-process CPU hog, and 62.6 s vs 19.6 s beside another two-thread torch job. Torch's OpenMP
threads meet at a barrier after every small kernel; when they outnumber the free cores each
barrier waits for a descheduled thread, and an epoch slows far more than the load. So every pool
is set deliberately: a step uses ``threads`` threads for torch, numba and DuckDB alike, and
Dagster runs at most ``parallel_steps`` steps at once (cores // threads); parallelism comes from
running steps side by side (one model each), not from many threads in one step.

The thread count is fixed, not adapted to the load: results depend on it (a seeded MLP run
with one thread differs in the last bits from one with two), and a seeded run must repeat.
"""

import os
import sys
from dataclasses import dataclass

# Read by OpenMP/MKL when a library that uses them is loaded (later imports, child processes).
# Not NUMBA_NUM_THREADS: numba rereads it at every compilation and refuses a value that differs
# from the size of a thread pool it has already launched; numba.set_num_threads is the way.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def wait_passively() -> None:
    """Let OpenMP threads sleep, not spin, between parallel regions, unless the user chose otherwise.

    libgomp's threads spin for a while after each parallel region (numba's kernels run hundreds per block);
    beside DuckDB's writer threads they took the cores the writes needed. 300 x 2,500 Alpha158 + Alpha360
    with their writes: 5.5-5.9 s spinning, 4.8-5.0 s passive on 2 cores; 20 LSTM training batches (800 x 60 x 6)
    with two torch threads took the same either way. libgomp reads the variable when it loads, so ``qpipe`` sets it on import.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, as taskset or a container sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ComputePlan:
    cores: int
    threads: int  # per step, for torch, numba and DuckDB
    parallel_steps: int  # steps Dagster runs at once; also the training slots of a machine without GPUs

    def describe(self) -> str:
        return (f"{self.cores} cores: {self.parallel_steps} steps at once, {self.threads} "
                f"thread{'s' if self.threads > 1 else ''} each (QPIPE_THREADS)")


def compute_plan(threads: str | int | None = None) -> ComputePlan:
    """``QPIPE_THREADS`` = threads per step; ``auto`` (the default) is half the cores, at least one."""
    cores = cpu_cores()
    value = str(threads if threads is not None else os.environ.get("QPIPE_THREADS", "auto")).strip().lower()
    if value == "auto":
        per_step = max(1, cores // 2)
    elif value.isdigit() and int(value) > 0:
        per_step = int(value)
    else:
        raise ValueError(f"QPIPE_THREADS = {value!r}: expected auto or a positive number of threads per step")
    return ComputePlan(cores=cores, threads=per_step, parallel_steps=max(1, cores // per_step))


def use_threads(threads: int) -> None:
    """Bound this process's torch, numba and OpenMP/MKL pools to ``threads``.

    OpenMP/MKL read the environment when loaded; torch and numba are set directly (numba's pool
    keeps its launched size, at most the cores, and runs ``threads`` of them).
    DuckDB takes its ``threads`` from the warehouse connection config.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import numba

    # numba first: its first set_num_threads starts its OpenMP pool, which sets the process's OpenMP thread count to
    # the whole pool, and undid torch's where a torch op had run before (found in the tests: every core, not 1)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
