"""The dataset's segments in sessions: the fixed split of train, valid and test into one checkpoint and its train
and valid windows, and what each segment key means in qpipe."""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qpipe.features.store import LABEL_HORIZON
from qpipe.models.config import ConfigError
from qpipe.workflow.entries import Reader, Status, date


@dataclass(frozen=True)
class Checkpoint:
    day: dt.date  # the close that knows its valid window's last label, at the latest the session before its test
    train_days: int
    valid_days: int


@dataclass(frozen=True)
class Split:
    """The fixed split in session indices of ``days``: the segments' first and last sessions and the checkpoint's.

    The run's windows are ``windows_as_of(days, checkpoint, train_days, valid_days)``: the valid window is the
    ``valid_days`` sessions ending LABEL_HORIZON sessions before the checkpoint (the last label known at its
    close), the train window the ``train_days`` sessions before it."""

    days: np.ndarray
    train: tuple[int, int]
    valid: tuple[int, int]
    test_start: int
    checkpoint: int

    @property
    def valid_end(self) -> int:
        return self.checkpoint - LABEL_HORIZON

    @property
    def train_days(self) -> int:
        return self.valid[0] - self.train[0]

    @property
    def valid_days(self) -> int:
        return self.valid_end - self.valid[0] + 1

    @property
    def lead(self) -> int:
        """Sessions between the checkpoint and the session before the test (0 when the valid segment reaches it)."""
        return self.test_start - 1 - self.checkpoint

    def day(self, index: int) -> dt.date:
        return self.days[index].item()

    def checkpoint_entry(self) -> Checkpoint:
        return Checkpoint(self.day(self.checkpoint), int(self.train_days), int(self.valid_days))


def fixed_split(days: np.ndarray, bounds: dict, path: Path) -> Split:
    """One checkpoint for the test segment, trained on the train segment's labels and stopped early on the valid
    segment's: on the session whose close knows the valid segment's last label (LABEL_HORIZON sessions after it),
    or, when that falls in the test segment, on the session before the test starts. An earlier checkpoint is fine:
    each test day is scored by the newest checkpoint at or before it (predictions asset)."""
    def index(day: dt.date, side: str) -> int:
        return int(np.searchsorted(days, np.datetime64(day, "D"), side))

    order = ("train", "valid", "test")
    for earlier, later in zip(order, order[1:]):
        if bounds[later][0] <= bounds[earlier][0]:
            raise ConfigError(f"{path}: task.dataset.kwargs.segments.{later} starts at {bounds[later][0]}, not after "
                              f"the {earlier} segment's start ({bounds[earlier][0]}): the segments go train, valid, "
                              "test, in time")
    first_test = index(bounds["test"][0], "left")
    if first_test == 0 or first_test >= len(days):
        raise ConfigError(f"{path}: task.dataset.kwargs.segments.test starts at {bounds['test'][0]}, outside the "
                          f"calendar's {days[0]}..{days[-1]}")
    train, valid = ((index(bounds[name][0], "left"), index(bounds[name][1], "right") - 1)
                    for name in ("train", "valid"))
    split = Split(days, train, valid, first_test, min(valid[1] + LABEL_HORIZON, first_test - 1))
    if split.valid_days < 5 or split.train_days < 20:
        raise ConfigError(f"{path}: task.dataset.kwargs.segments: {split.train_days} train and {split.valid_days} valid "
                          "sessions of known labels; a checkpoint needs at least 20 and 5")
    return split


def segment_entries(r: Reader, segments: str, bounds: dict, split: Split) -> None:
    r.say(f"{segments}.train", *_train_segment(split))
    r.say(f"{segments}.valid", *_valid_segment(split))
    checkpoint = split.day(split.checkpoint)
    r.say(f"{segments}.test", "honoured", f"models/<arch>_checkpoint on {checkpoint}; predictions from "
          f"{bounds['test'][0]} to {bounds['test'][1]}" + ("" if not split.lead else
          f" ({checkpoint}: the close that knows the valid segment's last label; each test day is scored by the "
          "newest checkpoint at or before it)"))
    for extra in ("pretrain", "pretrain_validation"):  # TabNet's pretraining segments
        if r.get(f"{segments}.{extra}") is not None:
            same = [date(v, extra, r.path) for v in r.get(f"{segments}.{extra}")] == \
                   list(bounds["train" if extra == "pretrain" else "valid"])
            r.say(f"{segments}.{extra}", "honoured" if same else "not honoured",
                  f"TabNet pretrains on the {'train' if extra == 'pretrain' else 'valid'} window" + ("" if same else
                  ", not on a segment of its own"))


def _train_segment(split: Split) -> tuple[Status, str]:
    """The train window runs from the train segment's first session to the session before the valid window."""
    last = split.valid[0] - 1
    said = f"train_days {split.train_days}"
    if split.train[1] == last:
        return "honoured", said
    if split.train[1] < last:
        return "changed", f"{said} (to {split.day(last)}: qpipe's train window ends where valid starts)"
    return "changed", (f"{said}, to {split.day(last)}: the valid segment starts inside the train segment, and "
                       "qpipe's train and valid windows do not overlap (train ends the session before valid starts)")


def _valid_segment(split: Split) -> tuple[Status, str]:
    said = f"valid_days {split.valid_days}"
    if split.valid_end == split.valid[1]:
        return "honoured", said
    end = split.day(split.valid_end)
    if split.valid[1] >= split.test_start:
        return "changed", (f"{said}, to {end}: the valid segment runs into the test segment; qpipe's valid window "
                           f"ends {LABEL_HORIZON} sessions before the test starts (the last label known by then)")
    n = split.valid[1] - split.valid_end
    return "changed", (f"{said}, to {end}: the labels of the valid segment's last {n} session{'s' if n > 1 else ''} "
                       "use prices of the test segment (Qlib's look-ahead, not copied)")


def session(days: np.ndarray, day: dt.date, first: bool) -> dt.date | None:
    """The first session on or after ``day`` (``first``), else the last on or before it."""
    i = int(np.searchsorted(days, np.datetime64(day, "D"), "left" if first else "right")) - (0 if first else 1)
    return days[i].item() if 0 <= i < len(days) else None
