"""One GPU per checkpoint step (K for a data-parallel one): a step claims free devices for as long as it trains.

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
    with claim_devices(folder, count, 1, wait_seconds, poll, on_wait) as (index,):
        yield index


@contextmanager
def claim_devices(folder: Path, count: int, wanted: int, wait_seconds: float = 3600.0, poll: float = 0.5,
                  on_wait=None) -> Iterator[list[int]]:
    """The indices of ``wanted`` devices among ``count`` that no other holder has, claimed all at once and held
    until the block ends. A step that finds fewer free lets go of them while it waits, so two data-parallel
    steps never each hold half of what both need. Waiting and timing out as ``claim_device``."""
    if not 1 <= wanted <= count:
        raise ValueError(f"cannot claim {wanted} of {count} GPUs")
    folder.mkdir(parents=True, exist_ok=True)
    began, told = time.monotonic(), False
    while True:
        held: list[tuple[int, int]] = []  # (index, descriptor holding its lock)
        for index in range(count):
            if len(held) == wanted:
                break
            handle = os.open(folder / f"cuda{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                continue
            held.append((index, handle))
        try:
            if len(held) == wanted:
                for _, handle in held:
                    os.ftruncate(handle, 0)
                    os.write(handle, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
                yield [index for index, _ in held]
                return
        finally:
            for _, handle in held:
                os.close(handle)  # closing the descriptor drops the lock
        busy = f"all {count} GPUs" if wanted == 1 else f"more than {count - wanted} of {count} GPUs"
        if time.monotonic() - began >= wait_seconds:
            raise TimeoutError(f"{busy} stayed claimed by other steps for {wait_seconds:.0f} s ({folder})")
        if on_wait is not None and not told:
            on_wait(f"{busy} are claimed by other steps; waiting for {'one' if wanted == 1 else wanted} ({folder})")
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
def step_devices(configured: str, home: Path, count: int, log=None) -> Iterator[list[str]]:
    """The ``count`` devices of a data-parallel checkpoint step (one per rank): ``step_device``'s one when
    ``count`` is 1; else ``count`` times the CPU, or ``count`` GPUs claimed together (``claim_devices``)."""
    import torch

    if count == 1:
        with step_device(configured, home, log) as device:
            yield [device]
        return
    if configured.startswith("cuda:"):
        raise ValueError(f"data-parallel training on {count} GPUs takes whole GPUs, but device {configured!r} names "
                         "one: set cuda or auto")
    if configured == "cpu" or (configured == "auto" and not torch.cuda.is_available()):
        yield ["cpu"] * count
        return
    folder = home / "devices"
    with claim_devices(folder, torch.cuda.device_count(), count, on_wait=log) as indices:
        if log is not None:
            log(f"training on {', '.join(f'cuda:{i}' for i in indices)} of {torch.cuda.device_count()} GPUs "
                f"(claimed in {folder})")
        yield [f"cuda:{i}" for i in indices]


@contextmanager
def _as_is(device: str) -> Iterator[str]:
    yield device


@contextmanager
def _claimed(folder: Path, count: int, log) -> Iterator[str]:
    with claim_device(folder, count, on_wait=log) as index:
        if log is not None:
            log(f"training on cuda:{index} of {count} GPUs (claimed in {folder})")
        yield f"cuda:{index}"
