"""Qlib's training target (qlib.md §3.2): the close-to-close return from T+1 to T+2."""

import numpy as np

from qpipe.features import ops
from qpipe.features.panel import Panel

LABEL_NAME = "LABEL0"


def label(panel: Panel) -> np.ndarray:
    """`Ref($close, -2)/Ref($close, -1) - 1` as float32 [T, J]; NaN on the last two rows."""
    close = panel["close"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return ops.ref(close, -2, panel.first) / ops.ref(close, -1, panel.first) - 1
