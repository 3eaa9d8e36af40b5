"""One GPU per checkpoint step: a step claims a free device for as long as it trains.

The ``gpu`` pool lets as many checkpoint steps run at once as the machine has GPUs, but Dagster does not say
which slot a step holds. So a step that trains on CUDA without naming an index takes the first GPU nobody
holds: an exclusive ``flock`` on ``<home>/devices/cuda<i>.lock``. The kernel releases it when the step's process
ends, however it ends (a crash, SIGKILL, the OOM killer), so a claim never outlives its step.
"""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def claim_device(folder: Path, count: int, wait_seconds: float = 3600.0, poll: float = 0.5,
                 on_wait=None) -> Iterator[int]:
    """The index of a device among ``count`` that no other holder has, held until the block ends.

    All busy: wait (``on_wait`` is told once), for up to ``wait_seconds``, then TimeoutError.
    """
    folder.mkdir(parents=True, exist_ok=True)
    began, told = time.monotonic(), False
    while True:
        for index in range(count):
            handle = os.open(folder / f"cuda{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                continue
            try:
                os.ftruncate(handle, 0)
                os.write(handle, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
                yield index
            finally:
                os.close(handle)  # closing the descriptor drops the lock
            return
        if time.monotonic() - began >= wait_seconds:
            raise TimeoutError(f"all {count} GPUs stayed claimed by other steps for {wait_seconds:.0f} s ({folder})")
        if on_wait is not None and not told:
            on_wait(f"all {count} GPUs are claimed by other steps; waiting for one ({folder})")
            told = True
        time.sleep(poll)


def step_device(configured: str, home: Path, log=None):
    """The device a checkpoint step trains on: ``configured`` as is, unless it is CUDA without an index on a
    machine with several GPUs, where the step claims one (``claim_device``). A context manager yielding a name."""
    import torch

    wants_cuda = configured == "cuda" or (configured == "auto" and torch.cuda.is_available())
    if not wants_cuda or torch.cuda.device_count() < 2:
        return _as_is(configured)
    return _claimed(home / "devices", torch.cuda.device_count(), log)


@contextmanager
def _as_is(device: str) -> Iterator[str]:
    yield device


@contextmanager
def _claimed(folder: Path, count: int, log) -> Iterator[str]:
    with claim_device(folder, count, on_wait=log) as index:
        if log is not None:
            log(f"training on cuda:{index} of {count} GPUs (claimed in {folder})")
        yield f"cuda:{index}"
