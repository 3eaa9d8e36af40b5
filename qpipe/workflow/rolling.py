"""Qlib's RollingGen in qpipe: a checkpoint every ``step`` sessions of the test segment, asked for on the command
line or by the YAML's ``rolling`` key."""

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qpipe.models.config import ConfigError
from qpipe.workflow.entries import Reader
from qpipe.workflow.segments import Checkpoint, Split


@dataclass(frozen=True)
class Rolling:
    """Qlib's ``RollingGen(step, rtype)``: a checkpoint every ``step`` sessions of the test segment, its train window
    sliding (ROLL_SD) or growing from the train segment's start (ROLL_EX); each test day is scored by the newest
    checkpoint, which is how ``RollingEnsemble`` joins the windows' predictions. One difference: the last session
    of a window is scored by the next window's checkpoint, trained at that close (every qpipe prediction uses the
    newest checkpoint trained by the day's close), where Qlib scores it with the window's own model."""

    step: int
    rtype: Literal["ROLL_EX", "ROLL_SD"] = "ROLL_EX"


def rolling_entries(r: Reader, given: Rolling | None, split: Split) -> Rolling | None:
    """The command line's RollingGen, else the YAML's top-level ``rolling`` key (qpipe's; Qlib builds RollingGen in
    code)."""
    in_yaml = r.get("rolling")
    if in_yaml is None:
        return given
    if not isinstance(in_yaml, dict) or set(in_yaml) - {"step", "rtype"} or "step" not in in_yaml:
        raise ConfigError(f"{r.path}: rolling = {in_yaml!r}: expected {{step: N, rtype: ROLL_EX or ROLL_SD}}")
    yaml_rolling = rolling_gen(in_yaml["step"], in_yaml.get("rtype", "ROLL_EX"), f"{r.path}: rolling")
    if given is None:
        r.say("rolling", "honoured", f"RollingGen(step={yaml_rolling.step}, rtype={yaml_rolling.rtype})"
              + _rolling_lead(split))
        return yaml_rolling
    r.say("rolling", "changed", f"the command line's RollingGen(step={given.step}, rtype={given.rtype}) instead"
          + _rolling_lead(split))
    return given


def _rolling_lead(split: Split) -> str:
    """What an earlier checkpoint (the valid segment ending before the session before the test) changes in RollingGen's
    windows: each checkpoint stays ``step`` sessions after the one before, so each is ``lead`` sessions early too."""
    if not split.lead:
        return ""
    n = split.lead + 1
    return (f"; each checkpoint is {split.lead} session{'s' if split.lead > 1 else ''} before the session before its "
            f"window (where its shifted valid segment's last label is known), so the last {n} sessions of every window "
            "but the last are scored by the next window's checkpoint, where Qlib scores them with the window's own "
            "model")


def rolling_gen(step: Any, rtype: Any, source: str) -> Rolling:
    """A RollingGen from Qlib's arguments; ``rtype`` also as ``expanding`` / ``sliding``."""
    rtype = {"expanding": "ROLL_EX", "sliding": "ROLL_SD"}.get(str(rtype).lower(), str(rtype).upper())
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"{source}: step = {step!r}: a positive number of sessions")
    if rtype not in ("ROLL_EX", "ROLL_SD"):
        raise ConfigError(f"{source}: rtype = {rtype!r}: ROLL_EX (expanding) or ROLL_SD (sliding)")
    return Rolling(step, rtype)


def rolling_checkpoints(split: Split, test: tuple[dt.date, dt.date], rolling: Rolling) -> list[Checkpoint]:
    """RollingGen's tasks: the test segment cut into windows of ``step`` sessions, one checkpoint each, every one
    ``step`` sessions after the one before (RollingGen shifts every segment by ``step``); the train window slides
    with it, or grows by ``step`` each time (expanding)."""
    days = split.days
    last = int(np.searchsorted(days, np.datetime64(test[1], "D"), "right")) - 1
    first = split.checkpoint_entry()
    return [Checkpoint(days[split.checkpoint + i * rolling.step].item(),
                       first.train_days + (i * rolling.step if rolling.rtype == "ROLL_EX" else 0), first.valid_days)
            for i in range((last - split.test_start) // rolling.step + 1)]
