"""Qlib provider directories (``calendars/day.txt``, ``instruments/<market>.txt``,
``features/<inst>/<field>.day.bin``): read them into the canonical frame, and write them.

Format (reference/qlib.md §1.1): each ``.day.bin`` is little-endian float32; element 0 is the
calendar index of the first row, the rest are one value per calendar day up to the last row,
NaN on suspended days. Qlib's fields are already adjusted, so they are taken as they are.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qpipe.data.validation import PRICE_COLUMNS, PriceDataError, validate_prices

FIELDS = ("open", "high", "low", "close", "vwap", "volume", "factor")


def read_calendar(root: Path) -> np.ndarray:
    path = root / "calendars" / "day.txt"
    if not path.is_file():
        raise PriceDataError("missing calendar", str(path), detail="a Qlib provider needs calendars/day.txt")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        days = pd.to_datetime(lines, format="%Y-%m-%d").to_numpy().astype("datetime64[D]")
    except ValueError as err:
        raise PriceDataError("unparseable date", str(path), detail=str(err)) from None
    if len(days) == 0:
        raise PriceDataError("empty source", str(path), detail="the calendar has no days")
    return days


def read_instruments(root: Path, market: str) -> pd.DataFrame:
    """Membership spans of one market file: market, instrument, start_date, end_date."""
    path = root / "instruments" / f"{market}.txt"
    if not path.is_file():
        raise PriceDataError("missing market file", str(path), detail=f"no instruments/{market}.txt")
    spans = pd.read_csv(path, sep="\t", header=None, names=["instrument", "start_date", "end_date"], dtype=str)
    for col in ("start_date", "end_date"):
        parsed = pd.to_datetime(spans[col], format="%Y-%m-%d", errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = spans[bad].iloc[0]
            raise PriceDataError("unparseable date", str(path), instrument=row["instrument"],
                                 detail=f"{col} {row[col]!r}")
        spans[col] = parsed
    spans.insert(0, "market", market)
    return spans


def _read_bin(path: Path, calendar_len: int, instrument: str) -> tuple[int, np.ndarray]:
    raw = np.fromfile(path, dtype="<f4")
    if len(raw) < 1 or not np.isfinite(raw[0]) or raw[0] != int(raw[0]) or raw[0] < 0:
        raise PriceDataError("corrupt bin header", str(path), instrument=instrument,
                             detail="element 0 must be the calendar index of the first row")
    start, values = int(raw[0]), raw[1:]
    if start + len(values) > calendar_len:
        raise PriceDataError(
            "bin length does not match the calendar", str(path), instrument=instrument,
            detail=f"starts at calendar index {start} with {len(values)} values, "
                   f"but the calendar has only {calendar_len} days")
    return start, values


@dataclass(frozen=True)
class QlibSource:
    """A Qlib provider directory; ``market`` names the membership file that becomes the universe."""

    path: str
    market: str = "all"

    def load(self) -> pd.DataFrame:
        root = Path(self.path)
        calendar = read_calendar(root)
        feature_dirs = sorted(p for p in (root / "features").glob("*") if p.is_dir())
        if not feature_dirs:
            raise PriceDataError("empty source", str(root / "features"), detail="no instrument folders")
        frames = [self._instrument_frame(d, calendar) for d in feature_dirs]
        frame = pd.concat([f for f in frames if f is not None], ignore_index=True)
        return validate_prices(frame, str(root))

    def universe(self) -> pd.DataFrame:
        return read_instruments(Path(self.path), self.market)

    def _instrument_frame(self, folder: Path, calendar: np.ndarray) -> pd.DataFrame | None:
        instrument = folder.name.upper()
        series = {}
        for name in FIELDS:
            path = folder / f"{name}.day.bin"
            if path.is_file():
                series[name] = _read_bin(path, len(calendar), instrument)
        if "close" not in series:
            raise PriceDataError("missing columns", str(folder), instrument=instrument, detail="no close.day.bin")
        lo = min(start for start, _ in series.values())
        hi = max(start + len(v) for start, v in series.values())
        if hi <= lo:
            return None
        columns = {}
        for name in FIELDS:
            col = np.full(hi - lo, np.nan)
            if name in series:
                start, values = series[name]
                col[start - lo:start - lo + len(values)] = values
            elif name == "factor":
                col[:] = 1.0
            columns[name] = col
        frame = pd.DataFrame({"date": calendar[lo:hi].astype("datetime64[ns]"), "instrument": instrument, **columns})
        return frame[list(PRICE_COLUMNS)]


def write_qlib_provider(prices: pd.DataFrame, root: str | Path, universe: pd.DataFrame | None = None) -> Path:
    """Dump a canonical frame as a Qlib provider directory (what Qlib's ``dump_bin.py dump_all`` writes).

    ``universe`` (market, instrument, start_date, end_date) adds ``instruments/<market>.txt`` files
    beside ``all.txt``.
    """
    root = Path(root)
    dates = np.sort(prices["date"].unique()).astype("datetime64[D]")
    (root / "calendars").mkdir(parents=True, exist_ok=True)
    (root / "calendars" / "day.txt").write_text("\n".join(str(d) for d in dates) + "\n")
    (root / "instruments").mkdir(exist_ok=True)
    spans = []
    for instrument, rows in prices.groupby("instrument", sort=True):
        idx = np.searchsorted(dates, rows["date"].to_numpy().astype("datetime64[D]"))
        lo, hi = idx.min(), idx.max() + 1
        folder = root / "features" / str(instrument).lower()
        folder.mkdir(parents=True, exist_ok=True)
        for name in FIELDS:
            values = np.full(hi - lo, np.nan, dtype="<f4")
            values[idx - lo] = rows[name].to_numpy(dtype=np.float64)
            np.hstack([np.float32(lo), values]).astype("<f4").tofile(folder / f"{name}.day.bin")
        spans.append(f"{str(instrument).upper()}\t{dates[lo]}\t{dates[hi - 1]}")
    (root / "instruments" / "all.txt").write_text("\n".join(spans) + "\n")
    if universe is not None:
        for market, rows in universe.groupby("market"):
            lines = [f"{r.instrument.upper()}\t{pd.Timestamp(r.start_date).date()}\t{pd.Timestamp(r.end_date).date()}"
                     for r in rows.itertuples()]
            (root / "instruments" / f"{market}.txt").write_text("\n".join(lines) + "\n")
    return root
