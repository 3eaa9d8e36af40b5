"""Qlib's Alpha360 feature set (qlib.md §4): 60 days of each price field over today's close, and of volume
over today's volume.

Blocks CLOSE, OPEN, HIGH, LOW, VWAP, VOLUME; inside a block the lag runs 59 -> 0 (oldest first), so
``reshape(N, 6, 60)`` recovers [field, time]. ``PRICEi = Ref($P, i)/$close``, ``PRICE0 = $P/$close``,
``VOLUMEi = Ref($volume, i)/($volume+1e-12)``; every step is float32, as in Qlib.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from qpipe.features import ops
from qpipe.features.panel import Panel

LAGS = range(59, -1, -1)
ALPHA360_FIELDS = ("close", "open", "high", "low", "vwap", "volume")
ALPHA360_NAMES: list[str] = [f"{field.upper()}{lag}" for field in ALPHA360_FIELDS for lag in LAGS]


def alpha360_columns(panel: Panel, ops: Any = ops) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, float32 [T, J]) for the 360 Alpha360 features, in Qlib's column order.

    ``ops`` is the operator table: the numba CPU kernels, or ``TorchOps(device)`` on a GPU.
    """
    first, close, volume = ops.asarray(panel.first), ops.asarray(panel["close"]), ops.asarray(panel["volume"])
    for field in ALPHA360_FIELDS:
        series = ops.asarray(panel[field])
        scale = volume + 1e-12 if field == "volume" else close
        for lag in LAGS:
            lagged = ops.ref(series, lag, first) if lag else series
            with np.errstate(divide="ignore", invalid="ignore"):
                values = lagged / scale
            yield f"{field.upper()}{lag}", ops.float32(values)
