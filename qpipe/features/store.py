"""Feature tables in the warehouse: load the lookback a range needs, compute, replace atomically.

A range of days [start, end] reads only ``LOOKBACK`` trading days before ``start`` (the longest
window, 60 rows, plus the one extra row of ``Ref($close, 1)`` inside it; a user's set its own
longest expression's, qpipe.features.custom) and writes only rows
dated inside the range, so a one-day partition equals the full-history computation. Long
ranges are computed in blocks of days (each with its own lookback, so the values are the same): as
many as ``block_cells`` price cells hold for the range's instruments, at least ``CHUNK_DAYS``, and
each block of days in groups of instruments of at most ``block_cells`` price
cells (every Alpha158/Alpha360 expression reads one instrument's own series): peak memory is set
by the block size, not by the universe. Each block is written on another thread while the next one is
computed (a long range streamed into one INSERT per staging table), and the range is replaced in one
transaction: a failure writes nothing.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from qpipe.data import lake
from qpipe.data import warehouse as wh
from qpipe.features import ops
from qpipe.features.alpha158 import ALPHA158_NAMES, alpha158_columns
from qpipe.features.alpha360 import ALPHA360_NAMES, alpha360_columns
from qpipe.features.custom import read_feature_sets
from qpipe.features.expressions import Expression
from qpipe.features.label import LABEL_NAME, label
from qpipe.features.panel import PRICE_FIELDS, Panel, panel_from_frame
from qpipe.settings import BLOCK_CELLS

LOOKBACK = 61  # rows before a day that its features read
LABEL_HORIZON = 2  # LABEL0 of day d is known at the close of the 2nd trading day after d
# The fewest days a block holds: with the default BLOCK_CELLS, 500 days (+61) of at most 534 instruments. A
# smaller universe gets longer blocks: each block has a fixed cost (an insert of less than a row group, 122,880
# rows, went to DuckDB's log and again to the file: 300 instruments x 2,500 days wrote twice as fast in 3 blocks
# as in 5); streamed into one INSERT, blocks of 250 and 125 days still took 5.0-5.6 s against 4.8-5.0 s.
CHUNK_DAYS = 500


def _ddl(columns: list[str]) -> str:
    return ", ".join(["date DATE NOT NULL", "instrument VARCHAR NOT NULL", *(f'"{c}" FLOAT' for c in columns)])


@dataclass(frozen=True)
class FeatureSet:
    name: str
    columns: list[str]
    compute: Callable[[Panel, Any], Iterator[tuple[str, np.ndarray]]]  # (panel, operator table) -> columns
    lookback: int = LOOKBACK  # rows before a day that its features read
    expressions: dict[str, str] | None = None  # a user's set: column -> its Qlib expression (qpipe.features.custom)

    @property
    def table(self) -> str:
        return f"features.{self.name}"

    @property
    def ddl(self) -> str:
        return _ddl(self.columns)


def expression_set(name: str, expressions: dict[str, Expression]) -> FeatureSet:
    """A user's feature set: its columns' Qlib expressions, evaluated with the operator table of the step."""
    def compute(panel: Panel, operators: Any) -> Iterator[tuple[str, np.ndarray]]:
        for column, expression in expressions.items():
            yield column, operators.float32(expression.evaluate(panel, operators))

    return FeatureSet(name, list(expressions), compute, max(e.lookback for e in expressions.values()),
                      {column: e.text for column, e in expressions.items()})


def register(name: str, expressions: dict[str, Expression]) -> FeatureSet:
    """A Qlib workflow's own loader set, in this process (its runs' processes read it from QPIPE_FEATURE_SETS)."""
    FEATURE_SETS[name] = expression_set(name, expressions)
    return FEATURE_SETS[name]


FEATURE_SETS = {
    "alpha158": FeatureSet("alpha158", ALPHA158_NAMES, alpha158_columns),
    "alpha360": FeatureSet("alpha360", ALPHA360_NAMES, alpha360_columns),
    # (QPIPE_FEATURE_SETS alone: the shell's other settings may be ones a qpipe qrun workflow leaves out)
    **{name: expression_set(name, expressions)
       for name, expressions in read_feature_sets(os.environ.get("QPIPE_FEATURE_SETS", "")).items()},
}
LABEL_TABLE = "features.label"
EXPRESSIONS = "features.expressions"  # a user's sets: the expression each column of their tables was computed from
LABEL_DDL = _ddl([LABEL_NAME]) + ", known_on DATE NOT NULL"


def operators(device: str = "auto") -> Any:
    """The operator table features are computed with: numba's CPU kernels, or ``TorchOps`` on a CUDA device.

    "auto" takes the GPU when one is visible; a machine without an NVIDIA driver is told apart without
    importing torch, which would cost a CPU-only step a second or two.
    """
    if device == "cpu" or (device == "auto" and not Path("/proc/driver/nvidia").exists()):
        return ops
    import torch

    from qpipe.features.ops_torch import TorchOps
    from qpipe.training.reproducibility import resolve_device

    if device == "auto" and not torch.cuda.is_available():
        return ops
    return TorchOps(resolve_device(device, setting="QPIPE_FEATURE_DEVICE"))


def calendar(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Trading days present in raw.prices (Qlib's calendar: the union of all dates)."""
    rows = con.execute(f"SELECT DISTINCT date FROM {wh.PRICES} ORDER BY date").fetchnumpy()["date"]
    return np.asarray(rows).astype("datetime64[D]")


def first_dates(con: duckdb.DuckDBPyConnection) -> dict[str, np.datetime64]:
    """Each instrument's first day in the whole warehouse: where its series, and its windows, begin."""
    rows = con.execute(f"SELECT instrument, min(date) FROM {wh.PRICES} GROUP BY instrument").fetchall()
    return {instrument: np.datetime64(day, "D") for instrument, day in rows}


def load_panel(con: duckdb.DuckDBPyConnection, dates: np.ndarray, starts: dict | None = None,
               instruments: tuple[str, str] | None = None) -> Panel:
    """Prices of the calendar days ``dates`` as a panel whose series know where they really began.

    ``instruments`` = (first, last) loads only the instruments named between them.
    """
    where, params = "date BETWEEN ? AND ?", [pd.Timestamp(dates[0]).date(), pd.Timestamp(dates[-1]).date()]
    if instruments is not None:
        where, params = where + " AND instrument BETWEEN ? AND ?", [*params, *instruments]
    frame = con.execute(f"SELECT date, instrument, {', '.join(PRICE_FIELDS)} FROM {wh.PRICES} WHERE {where}",
                        params).df()
    return panel_from_frame(frame, first_dates=first_dates(con) if starts is None else starts, dates=dates)


def instrument_groups(con: duckdb.DuckDBPyConnection, dates: np.ndarray,
                      block_cells: int = BLOCK_CELLS) -> list[tuple[str, str]]:
    """The instruments priced within ``dates``, as (first, last) name ranges of at most ``block_cells`` cells each."""
    names = [row[0] for row in con.execute(
        f"SELECT DISTINCT instrument FROM {wh.PRICES} WHERE date BETWEEN ? AND ? ORDER BY instrument",
        [pd.Timestamp(dates[0]).date(), pd.Timestamp(dates[-1]).date()]).fetchall()]
    if not names:
        return []
    groups = -(-len(names) * len(dates) // block_cells)
    size = -(-len(names) // groups)  # even groups: 300 instruments are one group, 600 two of 300
    return [(names[i], names[min(i + size, len(names)) - 1]) for i in range(0, len(names), size)]


def _blocks(con: duckdb.DuckDBPyConnection, first_row: int, last_row: int, lookback: int, lookahead: int,
            chunk_days: int, block_cells: int) -> Iterator[tuple[int, Panel]]:
    """Panels covering calendar rows [first_row, last_row], each with ``lookback`` rows before and ``lookahead``
    after, by chunks of days (at least ``chunk_days``, more where ``block_cells`` allows) then groups of
    instruments; yields (rows before the chunk, panel)."""
    days, starts = calendar(con), first_dates(con)
    if first_row <= last_row:
        (priced,) = con.execute(f"SELECT count(DISTINCT instrument) FROM {wh.PRICES} WHERE date BETWEEN ? AND ?",
                                [days[first_row].item(), days[last_row].item()]).fetchall()[0]
        chunk_days = max(chunk_days, block_cells // max(priced, 1) - lookback - lookahead)
    for c0, c1 in _chunks(first_row, last_row, chunk_days):
        window = days[max(0, c0 - lookback):c1 + lookahead + 1]
        for group in instrument_groups(con, window, block_cells):
            yield c0 - max(0, c0 - lookback), load_panel(con, window, starts, group)


def _rows_table(panel: Panel, rows: slice, columns: Iterator[tuple[str, np.ndarray]],
                extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """(date, instrument, columns...) for the present rows of ``rows``, datetime-major."""
    present = panel.present[rows]
    t_idx, j_idx = np.nonzero(present)
    flat = np.flatnonzero(present)  # a gather by index is cheaper than a boolean mask for hundreds of columns
    data = {
        "date": pa.array(panel.dates[rows][t_idx]),
        # names from a dictionary of the panel's instruments: 0.003 s for 210,000 rows, 0.24 s as a numpy string each
        "instrument": pa.DictionaryArray.from_arrays(j_idx.astype(np.int32), panel.instruments.astype(str)).cast(pa.string()),
    }
    for name, values in columns:
        data[name] = pa.array(values[rows].ravel().take(flat), type=pa.float32())
    data.update(extra or {})
    return pa.table(data)


def day_range(days: np.ndarray, start, end) -> tuple[int, int]:
    """Indices of the first and last calendar day inside [start, end] (hi < lo when none is)."""
    lo = np.searchsorted(days, np.datetime64(pd.Timestamp(start).date(), "D"))
    hi = np.searchsorted(days, np.datetime64(pd.Timestamp(end).date(), "D"), "right") - 1
    return int(lo), int(hi)


def sessions_without_prices(con: duckdb.DuckDBPyConnection, sessions: np.ndarray, start: pd.Timestamp,
                            end: pd.Timestamp, lookback: int) -> np.ndarray:
    """The market's ``sessions`` that rows of [start, end] read (the ``lookback`` before start too) and on which
    raw.prices has no row: the rows are computed without them (store.calendar is the stored days)."""
    lo, hi = day_range(sessions, start, end)
    if hi < lo:  # no session in the range: it writes nothing
        return sessions[:0]
    needed = sessions[max(0, lo - lookback):hi + 1]
    stored = con.execute(f"SELECT DISTINCT date FROM {wh.PRICES} WHERE date BETWEEN ? AND ?",
                         [needed[0].item(), needed[-1].item()]).fetchnumpy()["date"]
    return np.setdiff1d(needed, np.asarray(stored).astype("datetime64[D]"))


def _chunks(lo: int, hi: int, size: int) -> Iterator[tuple[int, int]]:
    for c0 in range(lo, hi + 1, size):
        yield c0, min(c0 + size - 1, hi)


def feature_blocks(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet], start, end,
                   chunk_days: int = CHUNK_DAYS, block_cells: int = BLOCK_CELLS,
                   operators: Any = ops) -> Iterator[tuple[FeatureSet, pa.Table]]:
    """Each feature set's rows for the trading days in [start, end], block by block, computed with ``operators``."""
    lo, hi = day_range(calendar(con), start, end)
    lookback = max(fs.lookback for fs in feature_sets)  # (a set's values are the same with a longer history)
    for skip, panel in _blocks(con, lo, hi, lookback, 0, chunk_days, block_cells):
        for feature_set in feature_sets:
            yield feature_set, _rows_table(panel, slice(skip, None), feature_set.compute(panel, operators))


def label_blocks(con: duckdb.DuckDBPyConnection, start, end, chunk_days: int = CHUNK_DAYS,
                 block_cells: int = BLOCK_CELLS) -> Iterator[pa.Table]:
    """The labels that become known on the trading days in [start, end], block by block.

    Row (d, instrument) carries LABEL0 of day d and ``known_on`` = the second trading day after
    d; only days whose two future closes are in the warehouse get a row.
    """
    lo, hi = day_range(calendar(con), start, end)
    for _, panel in _blocks(con, max(lo - LABEL_HORIZON, 0), hi - LABEL_HORIZON, 0, LABEL_HORIZON, chunk_days,
                            block_cells):
        n_rows = len(panel.dates) - LABEL_HORIZON
        t_idx = np.nonzero(panel.present[:n_rows])[0]
        known_on = pa.array(panel.dates[t_idx + LABEL_HORIZON])
        yield _rows_table(panel, slice(0, n_rows), iter([(LABEL_NAME, label(panel))]), {"known_on": known_on})


def write_features(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet], start, end,
                   chunk_days: int = CHUNK_DAYS, block_cells: int = BLOCK_CELLS, operators: Any = ops) -> dict[str, int]:
    """Replace the feature sets' rows for [start, end] in one transaction; returns rows per set.

    DuckDB keeps a transaction's inserted rows in memory until it commits (5.35 GB for 1,000 instruments x
    2,500 days in one transaction). So a range of more than ``block_cells`` cells goes into a staging table per
    set, filled by one streaming INSERT statement (``wh.streamed_inserts``: its row groups go straight into
    the file as they fill), and one transaction then puts every set's rows in place
    (``wh.replace_range``): a reader sees all of them or none, and a failure before it leaves the tables as they
    were. A smaller range (a day's increment) goes straight into the tables, writing half as much to DuckDB's
    log, and ends with a checkpoint of its own (``wh.checkpoint``). So does any range on a lake, whose inserts go
    to Parquet files as they come: its transaction holds their names, not their rows.
    """
    refuse_changed_sets(con, feature_sets)
    for fs in feature_sets:
        wh.ensure_table(con, fs.table, fs.ddl)
    record_expressions(con, feature_sets)
    written = {fs.name: 0 for fs in feature_sets}
    if lake.is_lake(con) or _range_cells(con, start, end) <= block_cells:  # a lake writes Parquet files as it goes
        with wh.bulk_load(con):
            with wh.transaction(con):
                for fs in feature_sets:
                    wh.delete_range(con, fs.table, start, end)
                _insert_blocks(con, feature_sets, start, end, {fs.name: fs.table for fs in feature_sets}, written,
                               chunk_days, block_cells, operators)
            wh.checkpoint(con)
        return written
    staging = {fs.name: f"{fs.table}{wh.STAGING}" for fs in feature_sets}
    for fs in feature_sets:
        con.execute(f"CREATE OR REPLACE TABLE {staging[fs.name]} ({fs.ddl})")  # one a killed run left goes too
    try:
        with wh.bulk_load(con):
            _insert_blocks(con, feature_sets, start, end, staging, written, chunk_days, block_cells, operators,
                           streamed=True)
            with wh.transaction(con):
                for fs in feature_sets:
                    wh.replace_range(con, fs.table, staging[fs.name], start, end)
    finally:
        for name in staging.values():
            con.execute(f"DROP TABLE IF EXISTS {name}")
    return written


class ChangedSetError(ValueError):
    pass


def refuse_changed_sets(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet]) -> None:
    """A ChangedSetError where a user's set's stored table holds other columns, or was computed from other expressions,
    than QPIPE_FEATURE_SETS says now (found in review: a changed expression went into the days written after it, the
    others kept the old one; an added column was dropped in silence, a removed one failed in DuckDB's words)."""
    for fs in feature_sets:
        if fs.expressions is None or not wh.has_table(con, fs.table):
            continue
        stored = [c for c, *_ in con.execute(f"SELECT * FROM {fs.table} LIMIT 0").description][2:]
        recorded = dict(con.execute(f"SELECT column_name, expression FROM {EXPRESSIONS} WHERE set_name = ?",
                                    [fs.name]).fetchall()) if wh.has_table(con, EXPRESSIONS) else {}
        changed = [f"{c}: {recorded[c]} then, {fs.expressions[c]} now" for c in fs.columns
                   if c in recorded and recorded[c] != fs.expressions[c]]
        if stored != fs.columns or changed:
            what = "; ".join(changed) if stored == fs.columns else (
                f"its columns are {', '.join(stored)}; QPIPE_FEATURE_SETS's are {', '.join(fs.columns)}")
            raise ChangedSetError(
                f"{fs.table} was computed from another definition of the set {fs.name} ({what}): its days would mix "
                f"the two. Give the new definition a name of its own in QPIPE_FEATURE_SETS (features/<new name>), or "
                f"drop the old table to compute every day again (DROP TABLE {fs.table} in the warehouse; checkpoints "
                "trained on it then score the new definition: train them again)")


def record_expressions(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet]) -> None:
    """The expressions each user's set in ``feature_sets`` is computed from, kept beside its table."""
    sets = [fs for fs in feature_sets if fs.expressions is not None]
    if not sets:
        return
    wh.ensure_table(con, EXPRESSIONS, "set_name VARCHAR NOT NULL, column_name VARCHAR NOT NULL, "
                                      "expression VARCHAR NOT NULL")
    with wh.transaction(con):
        for fs in sets:
            con.execute(f"DELETE FROM {EXPRESSIONS} WHERE set_name = ?", [fs.name])
            con.executemany(f"INSERT INTO {EXPRESSIONS} VALUES (?, ?, ?)",
                            [(fs.name, column, text) for column, text in fs.expressions.items()])


def _range_cells(con: duckdb.DuckDBPyConnection, start, end) -> int:
    """Trading days in [start, end] x the instruments priced in them: the size of the range's feature rows."""
    days, instruments = con.execute(f"SELECT count(DISTINCT date), count(DISTINCT instrument) FROM {wh.PRICES} "
                                    "WHERE date BETWEEN ? AND ?",
                                    [pd.Timestamp(start).date(), pd.Timestamp(end).date()]).fetchall()[0]
    return days * instruments


def _insert_blocks(con: duckdb.DuckDBPyConnection, feature_sets: list[FeatureSet], start, end,
                   into: dict[str, str], written: dict[str, int], chunk_days: int, block_cells: int,
                   operators: Any, streamed: bool = False) -> None:
    """Each block of each set inserted into ``into[set name]`` while the next is computed: on a second thread
    inside the caller's transaction, or ``streamed`` into one statement per table (``wh.streamed_inserts``)."""
    inserts = wh.streamed_inserts(con) if streamed else wh.inserts_in_background(con)
    with wh.cursor(con) as prices, inserts as insert:  # the inserts' threads have ``con``
        for fs, table in feature_blocks(prices, feature_sets, start, end, chunk_days, block_cells, operators):
            insert(into[fs.name], table)
            written[fs.name] += len(table)


def write_labels(con: duckdb.DuckDBPyConnection, start, end, chunk_days: int = CHUNK_DAYS,
                 block_cells: int = BLOCK_CELLS) -> int:
    """Replace the labels known on [start, end] in one transaction; returns rows written."""
    wh.ensure_table(con, LABEL_TABLE, LABEL_DDL)
    written = 0
    with wh.transaction(con), wh.cursor(con) as prices:
        wh.delete_range(con, LABEL_TABLE, start, end, date_column="known_on")
        with wh.inserts_in_background(con) as insert:
            for table in label_blocks(prices, start, end, chunk_days, block_cells):
                insert(LABEL_TABLE, table)
                written += len(table)
    return written
