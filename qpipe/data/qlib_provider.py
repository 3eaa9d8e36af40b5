"""Qlib provider directories (``calendars/day.txt``, ``instruments/<market>.txt``,
``features/<inst>/<field>.day.bin``): read them into the canonical frame, and write them.

Format (reference/qlib.md §1.1): each ``.day.bin`` is little-endian float32; element 0 is the
calendar index of the first row, the rest are one value per calendar day up to the last row,
NaN on suspended days. Qlib's fields are already adjusted, so they are taken as they are.
"""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from qpipe.data.validation import (
    PRICE_COLUMNS,
    UNIVERSE_COLUMNS,
    PriceDataError,
    empty_prices,
    no_concepts,
    validate_prices,
)
from qpipe.settings import LOAD_CELLS

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


def _bin_span(fd: int, path: Path, calendar_len: int, instrument: str) -> tuple[int, int]:
    """(calendar index of the first row, number of rows) from the 4-byte header and the file's size."""
    size = os.fstat(fd).st_size
    header = np.frombuffer(os.pread(fd, 4, 0), dtype="<f4")
    if size % 4 or len(header) < 1 or not np.isfinite(header[0]) or header[0] != int(header[0]) or header[0] < 0:
        raise PriceDataError("corrupt bin header", str(path), instrument=instrument,
                             detail="element 0 must be the calendar index of the first row, then one float32 per day")
    start, count = int(header[0]), size // 4 - 1
    if start + count > calendar_len:
        raise PriceDataError(
            "bin length does not match the calendar", str(path), instrument=instrument,
            detail=f"starts at calendar index {start} with {count} values, "
                   f"but the calendar has only {calendar_len} days")
    return start, count


def bin_span(path: Path, calendar_len: int, instrument: str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _bin_span(fd, path, calendar_len, instrument)
    finally:
        os.close(fd)


def _read_bin(path: Path, calendar_len: int, instrument: str, lo: int, hi: int) -> tuple[int, np.ndarray]:
    """The rows of calendar days [lo, hi) that the bin holds: the header, then one read at their offset
    (unbuffered, so a day costs 8 bytes, not the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        start, count = _bin_span(fd, path, calendar_len, instrument)
        first, last = max(lo, start), min(hi, start + count)
        if last <= first:
            return first, np.empty(0, dtype="<f4")
        return first, np.frombuffer(os.pread(fd, 4 * (last - first), 4 * (1 + first - start)), dtype="<f4")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class QlibSource:
    """A Qlib provider directory.

    ``market`` names the membership file that becomes the universe; with ``ingest="market"`` only
    the instruments ever in it since ``since`` (plus ``benchmark``, an index such as ``SH000300``)
    are read, with their whole history for lookbacks; ``ingest="all"`` reads every folder of
    ``features/``. ``prices(start, end)`` reads only those days: each bin is entered at the offset
    of ``start`` (Qlib's bins are one float32 per calendar day).
    """

    path: str
    market: str = "all"
    ingest: Literal["market", "all"] = "market"
    benchmark: str = ""
    since: str | None = None

    def calendar(self) -> np.ndarray:
        return read_calendar(Path(self.path))

    def span(self) -> tuple[np.datetime64, np.datetime64]:
        days = self.calendar()
        return days[0], days[-1]

    def folders(self) -> list[Path]:
        """The instrument folders to read, sorted; members without one are listed by ``missing_members``."""
        return self._selection[0]

    def missing_members(self) -> list[str]:
        return self._selection[1]

    @cached_property
    def _selection(self) -> tuple[list[Path], list[str]]:
        """Listed once per source object: a run's reads share it (the market file, the folder listing)."""
        features = Path(self.path) / "features"
        present = {p.name.upper(): p for p in features.glob("*") if p.is_dir()}
        if not present:
            raise PriceDataError("empty source", str(features), detail="no instrument folders")
        if self.market == "all" or self.ingest == "all":
            return [present[k] for k in sorted(present)], []
        members = self.universe()
        if self.since is not None:
            members = members[members["end_date"] >= pd.Timestamp(self.since)]
        wanted = sorted(set(members["instrument"].str.upper()) | ({self.benchmark.upper()} if self.benchmark else set()))
        if self.benchmark and self.benchmark.upper() not in present:
            raise PriceDataError("missing benchmark", str(features), instrument=self.benchmark.upper(),
                                 detail=f"no features/{self.benchmark.lower()} folder for the benchmark index")
        return [present[k] for k in wanted if k in present], [k for k in wanted if k not in present]

    def prices(self, start=None, end=None) -> pd.DataFrame:
        calendar = self.calendar()
        lo = 0 if start is None else int(np.searchsorted(calendar, np.datetime64(pd.Timestamp(start).date(), "D")))
        hi = len(calendar) if end is None else int(
            np.searchsorted(calendar, np.datetime64(pd.Timestamp(end).date(), "D"), side="right"))
        blocks = [block for d in self.folders() if (block := self._instrument_rows(d, calendar, lo, hi)) is not None]
        if not blocks:
            if (start, end) != (None, None):
                return empty_prices()  # the source has no rows on those days: the caller says so
            return validate_prices(empty_prices(), self.path)
        # One frame from the concatenated arrays (a frame per instrument would cost more than the reads).
        frame = pd.DataFrame({
            "date": np.concatenate([calendar[first:last] for first, last, _, _ in blocks]).astype("datetime64[ns]"),
            "instrument": np.repeat(np.array([name for _, _, name, _ in blocks], dtype=object),
                                    [last - first for first, last, _, _ in blocks]),
            **{name: np.concatenate([columns[name] for *_, columns in blocks]) for name in FIELDS}})
        return validate_prices(frame[list(PRICE_COLUMNS)], self.path)

    def listing_spans(self) -> pd.DataFrame:
        """The ``all`` market of the selected instruments: the span of their close bins (as Qlib's
        instruments/all.txt), read from the headers alone."""
        calendar = self.calendar()
        rows = []
        for folder in self.folders():
            path = folder / "close.day.bin"
            if not path.is_file():
                raise PriceDataError("missing columns", str(folder), instrument=folder.name.upper(),
                                     detail="no close.day.bin")
            start, count = bin_span(path, len(calendar), folder.name.upper())
            if count:
                rows.append(("all", folder.name.upper(), calendar[start], calendar[start + count - 1]))
        spans = pd.DataFrame(rows, columns=UNIVERSE_COLUMNS)
        for col in ("start_date", "end_date"):
            spans[col] = spans[col].astype("datetime64[ns]")
        return spans

    def universe(self) -> pd.DataFrame:
        return read_instruments(Path(self.path), self.market)

    def reference(self, load_cells: int = LOAD_CELLS) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The ``all`` spans of the instruments read (from the bins' headers alone, whatever ``load_cells``), plus
        the market file's spans; no concepts."""
        spans = self.listing_spans()
        if (Path(self.path) / "instruments" / "all.txt").is_file():  # Qlib's D.instruments("all"): a folder it does not
            listed = set(read_instruments(Path(self.path), "all")["instrument"].str.upper())  # list (the index
            spans = spans[spans["instrument"].isin(listed)]  # `qpipe dump-bin --benchmark` leaves out) is no member
        if self.market != "all":
            spans = pd.concat([spans, self.universe()], ignore_index=True)
        return spans[UNIVERSE_COLUMNS], no_concepts()

    def _instrument_rows(self, folder: Path, calendar: np.ndarray, lo: int, hi: int):
        """(first, last, instrument, fields) of one instrument's rows on calendar days [lo, hi), or None."""
        instrument = folder.name.upper()
        series = {}
        for name in FIELDS:
            path = folder / f"{name}.day.bin"
            if path.is_file():
                series[name] = _read_bin(path, len(calendar), instrument, lo, hi)
        if "close" not in series:
            raise PriceDataError("missing columns", str(folder), instrument=instrument, detail="no close.day.bin")
        read = [(start, len(v)) for start, v in series.values() if len(v)]
        if not read:
            return None
        first, last = min(start for start, _ in read), max(start + n for start, n in read)
        columns = {}
        for name in FIELDS:
            col = np.full(last - first, 1.0 if name == "factor" and name not in series else np.nan)
            if name in series:
                start, values = series[name]
                col[start - first:start - first + len(values)] = values
            columns[name] = col
        return first, last, instrument, columns


def collector_change(prices: pd.DataFrame) -> pd.Series:
    """Qlib's collector's ``change`` (what Qlib's Exchange holds limit moves against, as qpipe's backtest does): the
    unadjusted close over the last one before it, across suspensions, - 1; NaN on a suspended day."""
    ordered = prices.sort_values(["instrument", "date"])
    traded = ordered["close"] / ordered["factor"]
    last = traded.groupby(ordered["instrument"]).ffill().groupby(ordered["instrument"]).shift(1)
    return (traded / last - 1).reindex(prices.index)


def write_qlib_provider(prices: pd.DataFrame, root: str | Path, universe: pd.DataFrame | None = None,
                        fields: tuple[str, ...] = (*FIELDS, "change")) -> Path:
    """Dump a canonical frame as a Qlib provider directory (what Qlib's ``dump_bin.py dump_all`` writes).

    ``universe`` (market, instrument, start_date, end_date) adds ``instruments/<market>.txt`` files
    beside ``all.txt``; ``fields`` are the columns written, with ``change`` as Qlib's collector makes it where the
    frame has none: without it, Qlib's backtest of the directory holds no stock at a limit move, and its figures
    would part from qpipe's.
    """
    if "change" in fields and "change" not in prices:
        prices = prices.assign(change=collector_change(prices))
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
        for name in fields:
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
