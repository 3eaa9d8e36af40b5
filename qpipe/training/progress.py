"""Progress of a training run, reported from inside the batch loop every few seconds.

An epoch of a sequence model on two CPU cores takes minutes; a caller (the checkpoint asset, the
main job's console) gets a report every PROGRESS_EVERY seconds with the batch, the epoch and an
ETA, instead of silence until the epoch ends.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

PROGRESS_EVERY = 5.0  # seconds between progress reports inside an epoch

ProgressCallback = Callable[["Progress"], None]


@dataclass(frozen=True)
class Progress:
    """Where a training run is, reported every PROGRESS_EVERY seconds from inside the batch loop."""

    stage: str  # "train" or "pretrain"
    epoch: int  # 1-based
    n_epochs: int
    batch: int  # batches done in this epoch
    n_batches: int
    seconds: float  # since the stage started
    eta: float  # seconds left if every epoch runs (early stopping may end sooner)

    def line(self) -> str:
        done = (self.epoch - 1 + self.batch / self.n_batches) / self.n_epochs
        prefix = "pretrain " if self.stage == "pretrain" else ""
        return (f"{prefix}epoch {self.epoch}/{self.n_epochs}  batch {self.batch}/{self.n_batches}  "
                f"{done:4.0%}  ETA {clock(self.eta)}")


class ProgressClock:
    """Turns per-batch ticks into a Progress report at most every ``every`` seconds."""

    def __init__(self, stage: str, n_epochs: int, n_batches: int, report: ProgressCallback | None,
                 every: float | None = None):
        self.stage, self.n_epochs, self.n_batches, self.report = stage, n_epochs, n_batches, report
        self.every = PROGRESS_EVERY if every is None else every
        self.started = self.last = time.perf_counter()

    def tick(self, epoch: int, batch: int) -> None:
        """Call after each training batch (``batch`` 1-based within ``epoch``)."""
        now = time.perf_counter()
        if self.report is None or now - self.last < self.every:
            return
        self.last = now
        done = (epoch - 1) * self.n_batches + batch
        elapsed = now - self.started  # includes the validations so far, so the rate covers them too
        self.report(Progress(self.stage, epoch, self.n_epochs, batch, self.n_batches, elapsed,
                             elapsed / done * (self.n_epochs * self.n_batches - done)))


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
