"""Feature tables in the warehouse: load the lookback a range needs, compute, replace atomically.

A range of days [start, end] reads only ``LOOKBACK`` trading days before ``start`` (the longest
window, 60 rows, plus the one extra row of ``Ref($close, 1)`` inside it) and writes only rows
dated inside the range, so a one-day partition equals the full-history computation. Long
ranges are computed in blocks of ``CHUNK_DAYS`` (each with its own lookback, so the values are
the same) inside one transaction: memory stays bounded and a failure writes nothing.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from qpipe.data import warehouse as wh
from qpipe.features.alpha158 import ALPHA158_NAMES, alpha158_columns
from qpipe.features.alpha360 import ALPHA360_NAMES, alpha360_columns
from qpipe.features.label import LABEL_NAME, label
from qpipe.features.panel import PRICE_FIELDS, Panel, panel_from_frame

LOOKBACK = 61  # rows before a day that its features read
LABEL_HORIZON = 2  # LABEL0 of day d is known at the close of the 2nd trading day after d
CHUNK_DAYS = 500


def _ddl(columns: list[str]) -> str:
    return ", ".join(["date DATE NOT NULL", "instrument VARCHAR NOT NULL", *(f'"{c}" FLOAT' for c in columns)])


@dataclass(frozen=True)
class FeatureSet:
    name: str
    columns: list[str]
    compute: Callable[[Panel], Iterator[tuple[str, np.ndarray]]]

    @property
    def table(self) -> str:
        return f"features.{self.name}"

    @property
    def ddl(self) -> str:
        return _ddl(self.columns)


FEATURE_SETS = {
    "alpha158": FeatureSet("alpha158", ALPHA158_NAMES, alpha158_columns),
    "alpha360": FeatureSet("alpha360", ALPHA360_NAMES, alpha360_columns),
}
LABEL_TABLE = "features.label"
LABEL_DDL = _ddl([LABEL_NAME]) + ", known_on DATE NOT NULL"


def calendar(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Trading days present in raw.prices (Qlib's calendar: the union of all dates)."""
    rows = con.execute(f"SELECT DISTINCT date FROM {wh.PRICES} ORDER BY date").fetchnumpy()["date"]
    return np.asarray(rows).astype("datetime64[D]")


def first_dates(con: duckdb.DuckDBPyConnection) -> dict[str, np.datetime64]:
    """Each instrument's first day in the whole warehouse: where its series, and its windows, begin."""
    rows = con.execute(f"SELECT instrument, min(date) FROM {wh.PRICES} GROUP BY instrument").fetchall()
    return {instrument: np.datetime64(day, "D") for instrument, day in rows}


def load_panel(con: duckdb.DuckDBPyConnection, first_day, last_day, starts: dict | None = None) -> Panel:
    """Prices for [first_day, last_day] as a panel whose series know where they really began."""
    frame = con.execute(
        f"SELECT date, instrument, {', '.join(PRICE_FIELDS)} FROM {wh.PRICES} WHERE date BETWEEN ? AND ?",
        [pd.Timestamp(first_day).date(), pd.Timestamp(last_day).date()]).df()
    return panel_from_frame(frame, first_dates=first_dates(con) if starts is None else starts)


def _rows_table(panel: Panel, rows: slice, columns: Iterator[tuple[str, np.ndarray]],
                extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """(date, instrument, columns...) for the present rows of ``rows``, datetime-major."""
    present = panel.present[rows]
    t_idx, j_idx = np.nonzero(present)
    data = {
        "date": pa.array(panel.dates[rows][t_idx]),
        "instrument": pa.array(panel.instruments[j_idx].astype(str)),
    }
    for name, values in columns:
        data[name] = pa.array(values[rows][present], type=pa.float32())
    data.update(extra or {})
    return pa.table(data)


def day_range(days: np.ndarray, start, end) -> tuple[int, int]:
    """Indices of the first and last calendar day inside [start, end] (hi < lo when none is)."""
    lo = np.searchsorted(days, np.datetime64(pd.Timestamp(start).date(), "D"))
    hi = np.searchsorted(days, np.datetime64(pd.Timestamp(end).date(), "D"), "right") - 1
    return int(lo), int(hi)


def _chunks(lo: int, hi: int, size: int) -> Iterator[tuple[int, int]]:
    for c0 in range(lo, hi + 1, size):
        yield c0, min(c0 + size - 1, hi)


def feature_blocks(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet], start, end,
                   chunk_days: int = CHUNK_DAYS) -> Iterator[tuple[FeatureSet, pa.Table]]:
    """Each feature set's rows for the trading days in [start, end], block by block of days."""
    days, starts = calendar(con), first_dates(con)
    lo, hi = day_range(days, start, end)
    for c0, c1 in _chunks(lo, hi, chunk_days):
        load_from = max(0, c0 - LOOKBACK)
        panel = load_panel(con, days[load_from], days[c1], starts)
        for feature_set in feature_sets:
            yield feature_set, _rows_table(panel, slice(c0 - load_from, None), feature_set.compute(panel))


def label_blocks(con: duckdb.DuckDBPyConnection, start, end, chunk_days: int = CHUNK_DAYS) -> Iterator[pa.Table]:
    """The labels that become known on the trading days in [start, end], block by block.

    Row (d, instrument) carries LABEL0 of day d and ``known_on`` = the second trading day after
    d; only days whose two future closes are in the warehouse get a row.
    """
    days, starts = calendar(con), first_dates(con)
    lo, hi = day_range(days, start, end)
    for c0, c1 in _chunks(max(lo - LABEL_HORIZON, 0), hi - LABEL_HORIZON, chunk_days):
        panel = load_panel(con, days[c0], days[c1 + LABEL_HORIZON], starts)
        n_rows = c1 - c0 + 1
        t_idx = np.nonzero(panel.present[:n_rows])[0]
        known_on = pa.array(panel.dates[t_idx + LABEL_HORIZON])
        yield _rows_table(panel, slice(0, n_rows), iter([(LABEL_NAME, label(panel))]), {"known_on": known_on})


def write_features(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet], start, end,
                   chunk_days: int = CHUNK_DAYS) -> dict[str, int]:
    """Replace the feature sets' rows for [start, end] in one transaction; returns rows per set."""
    for feature_set in feature_sets:
        wh.ensure_table(con, feature_set.table, feature_set.ddl)
    written = {feature_set.name: 0 for feature_set in feature_sets}
    # Float features barely compress (2.2 vs 2.9 GB for 300 x 2500) and writing them uncompressed
    # is a quarter faster; the setting is reset so other tables keep DuckDB's compression.
    con.execute("SET force_compression = 'uncompressed'")
    try:
        with wh.transaction(con):
            for feature_set in feature_sets:
                wh.delete_range(con, feature_set.table, start, end)
            for feature_set, table in feature_blocks(con, feature_sets, start, end, chunk_days):
                wh.insert(con, feature_set.table, table)
                written[feature_set.name] += len(table)
    finally:
        con.execute("RESET force_compression")
    return written


def write_labels(con: duckdb.DuckDBPyConnection, start, end, chunk_days: int = CHUNK_DAYS) -> int:
    """Replace the labels known on [start, end] in one transaction; returns rows written."""
    wh.ensure_table(con, LABEL_TABLE, LABEL_DDL)
    written = 0
    with wh.transaction(con):
        wh.delete_range(con, LABEL_TABLE, start, end, date_column="known_on")
        for table in label_blocks(con, start, end, chunk_days):
            wh.insert(con, LABEL_TABLE, table)
            written += len(table)
    return written
