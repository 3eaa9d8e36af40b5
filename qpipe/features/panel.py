"""The [time x instrument] price panel every feature operator works on.

A panel holds one float32 matrix per price field. Row t is the t-th trading day of the
loaded window, column j the j-th instrument. Qlib evaluates each expression on one
instrument's own series, from its first row onward; the panel reproduces that with
``first``: rows before ``first[j]`` are outside instrument j's series (they are not NaN
rows *inside* a window, they do not exist), rows from ``first[j]`` on are its series,
with NaN on suspended days.
"""

from dataclasses import dataclass

import numpy as np

PRICE_FIELDS = ("open", "high", "low", "close", "vwap", "volume")


@dataclass(frozen=True)
class Panel:
    dates: np.ndarray  # datetime64[D], shape [T], ascending trading days
    instruments: np.ndarray  # object/str array, shape [J]
    fields: dict[str, np.ndarray]  # PRICE_FIELDS -> float32 [T, J]; NaN = suspended / no row / no value
    first: np.ndarray  # int64 [J]: row where each instrument's series starts (0 = at or before row 0)
    present: np.ndarray  # bool [T, J]: a price row exists (a feature row is emitted only there)

    def __post_init__(self) -> None:
        t, j = len(self.dates), len(self.instruments)
        for name in PRICE_FIELDS:
            arr = self.fields[name]
            if arr.shape != (t, j) or arr.dtype != np.float32:
                raise ValueError(f"panel field {name!r} must be float32 [{t}, {j}], got {arr.dtype} {arr.shape}")
        if self.first.shape != (j,) or self.present.shape != (t, j):
            raise ValueError("panel first/present have the wrong shape")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.dates), len(self.instruments)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.fields[name]


def panel_from_frame(frame, first_dates=None, dates=None) -> Panel:
    """Pivot long price rows (date, instrument, PRICE_FIELDS...) into a Panel.

    ``first_dates`` (instrument -> first date of its whole history) marks series that began
    before the frame's first row, so a lookback load sees the same series as a full load.
    ``dates`` (the calendar's days of the window) gives the rows when the frame holds only some
    instruments, whose own rows may skip a trading day that other instruments have.
    """
    import pandas as pd

    row_days = frame["date"].to_numpy().astype("datetime64[D]")
    if dates is None:
        dates = np.unique(row_days)
    dates = np.asarray(dates).astype("datetime64[D]")
    cols, instruments = pd.factorize(frame["instrument"].astype(str), sort=True)  # hashing: no string sort per row
    instruments = np.asarray(instruments, dtype=object)
    rows = np.searchsorted(dates, row_days)
    if len(rows) and (rows.max() >= len(dates) or (dates[rows] != row_days).any()):
        raise ValueError("panel_from_frame: price rows dated outside the given calendar days")
    shape = (len(dates), len(instruments))
    fields = {}
    for name in PRICE_FIELDS:
        arr = np.full(shape, np.nan, dtype=np.float32)
        if name in frame:
            arr[rows, cols] = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        fields[name] = arr
    present = np.zeros(shape, dtype=bool)
    present[rows, cols] = True
    first = np.where(present.any(axis=0), present.argmax(axis=0), len(dates)).astype(np.int64)
    if first_dates is not None:
        starts = np.array([np.datetime64(first_dates.get(i, dates[f] if f < len(dates) else dates[-1]), "D")
                           for i, f in zip(instruments, first)], dtype="datetime64[D]")
        first = np.where(starts < dates[0], 0, first)
    return Panel(dates=dates, instruments=instruments, fields=fields, first=first, present=present)
