"""Feature tables in the warehouse: load the lookback a range needs, compute, replace atomically.

A range of days [start, end] reads only ``LOOKBACK`` trading days before ``start`` (the longest
window, 60 rows, plus the one extra row of ``Ref($close, 1)`` inside it) and writes only rows
dated inside the range, so a one-day partition equals the full-history computation.
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


@dataclass(frozen=True)
class FeatureSet:
    name: str
    columns: list[str]
    compute: Callable[[Panel], Iterator[tuple[str, np.ndarray]]]

    @property
    def table(self) -> str:
        return f"features.{self.name}"


FEATURE_SETS = {
    "alpha158": FeatureSet("alpha158", ALPHA158_NAMES, alpha158_columns),
    "alpha360": FeatureSet("alpha360", ALPHA360_NAMES, alpha360_columns),
}
LABEL_TABLE = "features.label"


def _ddl(columns: list[str]) -> str:
    return ", ".join(["date DATE NOT NULL", "instrument VARCHAR NOT NULL", *(f'"{c}" FLOAT' for c in columns)])


LABEL_DDL = _ddl([LABEL_NAME]) + ", known_on DATE NOT NULL"


def calendar(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Trading days present in raw.prices (Qlib's calendar: the union of all dates)."""
    rows = con.execute(f"SELECT DISTINCT date FROM {wh.PRICES} ORDER BY date").fetchnumpy()["date"]
    return np.asarray(rows).astype("datetime64[D]")


def load_panel(con: duckdb.DuckDBPyConnection, first_day: np.datetime64, last_day: np.datetime64) -> Panel:
    """Prices for [first_day, last_day] as a panel whose series know where they really began."""
    fields = ", ".join(PRICE_FIELDS)
    frame = con.execute(
        f"SELECT date, instrument, {fields} FROM {wh.PRICES} WHERE date BETWEEN ? AND ?",
        [pd.Timestamp(first_day).date(), pd.Timestamp(last_day).date()]).df()
    starts = con.execute(f"SELECT instrument, min(date) FROM {wh.PRICES} GROUP BY instrument").fetchall()
    return panel_from_frame(frame, first_dates={i: np.datetime64(d, "D") for i, d in starts})


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


def _day_range(days: np.ndarray, start, end) -> tuple[int, int]:
    """Indices of the first and last calendar day inside [start, end] (hi < lo when none is)."""
    lo = np.searchsorted(days, np.datetime64(pd.Timestamp(start).date(), "D"))
    hi = np.searchsorted(days, np.datetime64(pd.Timestamp(end).date(), "D"), "right") - 1
    return int(lo), int(hi)


def write_features(con: duckdb.DuckDBPyConnection, feature_set: FeatureSet, start, end) -> int:
    """Compute and store one feature set for the trading days in [start, end]; returns rows written."""
    days = calendar(con)
    lo, hi = _day_range(days, start, end)
    if hi < lo:
        raise ValueError(f"raw.prices has no trading days between {start} and {end}")
    panel = load_panel(con, days[max(0, lo - LOOKBACK)], days[hi])
    out = slice(int(np.searchsorted(panel.dates, days[lo])), len(panel.dates))
    table = _rows_table(panel, out, feature_set.compute(panel))
    return wh.replace_range(con, feature_set.table, _ddl(feature_set.columns), table, start, end)


def write_labels(con: duckdb.DuckDBPyConnection, start, end) -> int:
    """Store the labels that become known on the trading days in [start, end].

    Row (d, instrument) carries LABEL0 of day d and ``known_on`` = the second trading day
    after d; only days whose two future closes are in the warehouse get a row.
    """
    days = calendar(con)
    lo, hi = _day_range(days, start, end)
    first_label, last_label = max(lo - LABEL_HORIZON, 0), hi - LABEL_HORIZON
    if last_label < first_label:  # nothing becomes known in the range (the first two days of history)
        return wh.replace_range(con, LABEL_TABLE, LABEL_DDL, pa.table({}), start, end, date_column="known_on")
    panel = load_panel(con, days[first_label], days[hi])
    n_rows = last_label - first_label + 1
    present = panel.present[:n_rows]
    t_idx = np.nonzero(present)[0]
    known_on = pa.array(panel.dates[t_idx + LABEL_HORIZON])
    table = _rows_table(panel, slice(0, n_rows), iter([(LABEL_NAME, label(panel))]), {"known_on": known_on})
    return wh.replace_range(con, LABEL_TABLE, LABEL_DDL, table, start, end, date_column="known_on")
