"""A range of the source's days into raw.prices: read in blocks of sessions, each validated as it comes, put on the
warehouse's adjustment basis and written in one transaction.

A day's increment is one read (the day and the ``ANCHOR_SESSIONS`` around it, to anchor on) and one write. A long
range, years of thousands of stocks, is read in blocks of about ``load_cells`` / ``CELLS_A_PRICE_ROW`` price rows (the first block of
``FIRST_BLOCK`` sessions sizes the others), each streamed into a staging table by one INSERT statement
(``wh.streamed_inserts``: its row groups go to the file as they fill) and put in place with each stock's scale
(``qpipe.data.anchoring``) by one transaction: the run holds one block, not the range, and a bad row in any block
fails it before anything is written. The source's rows are read once: the sessions before the range with the first
block, those after it with the last.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from qpipe.data import warehouse as wh
from qpipe.data.anchoring import ANCHOR_SESSIONS, Anchored, anchor_to_warehouse
from qpipe.data.validation import CELLS_A_PRICE_ROW, PRICE_COLUMNS, check_sessions, check_whole_days
from qpipe.settings import LOAD_CELLS

FIRST_BLOCK = 60  # sessions of the first read (a range of at most this many is one read); its rows size the others
STAGED = pa.schema([("date", pa.timestamp("ns")), ("instrument", pa.string()),
                    *((column, pa.float64()) for column in PRICE_COLUMNS[2:])])


class NoRows(ValueError):
    """The source has no rows on some sessions of the range: nothing was written."""


@dataclass(frozen=True)
class Ingested:
    rows: int
    instruments: int
    suspended: int
    first: pd.Timestamp
    last: pd.Timestamp
    blocks: int
    anchored: Anchored
    unanchored: list[str]  # stocks with stored prices outside the range that nothing anchors


def read_in_blocks(sessions: np.ndarray, rows_per_block: int, read: Callable[[int, int], pd.DataFrame]
                   ) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """(block, its rows) for blocks of ``sessions`` (``read(i, j)``: the rows of sessions[i:j]): the first
    ``FIRST_BLOCK`` sessions, then each as many as ``rows_per_block`` rows fill at the rows a session of the last
    block had."""
    done, size = 0, FIRST_BLOCK
    while done < len(sessions):
        block = sessions[done:done + size]
        rows = read(done, done + len(block))
        yield block, rows
        done += len(block)
        size = max(1, int(rows_per_block // max(len(rows) / len(block), 1)))


def anchor_sessions(calendar, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The range widened by the ANCHOR_SESSIONS sessions before and after it (none after today)."""
    span = pd.Timedelta(days=5 * ANCHOR_SESSIONS)
    before = calendar.trading_days(start - span, start)[-ANCHOR_SESSIONS - 1:]
    after = calendar.trading_days(end, min(end + span, pd.Timestamp(calendar.today())))[:ANCHOR_SESSIONS + 1]
    return pd.Timestamp(before[0]), pd.Timestamp(after[-1]) if len(after) else end


def ingest_prices(con: duckdb.DuckDBPyConnection, source, calendar, start: pd.Timestamp, end: pd.Timestamp,
                  describe: str, replace: bool = False, load_cells: int = LOAD_CELLS, allow_missing: bool = False,
                  log: Callable[[str], None] = lambda line: None) -> Ingested:
    """Replace the stored prices of the sessions [start, end] with the source's (see the module's docstring).

    A session without rows for more than a few of the instruments the session before had is refused as a day the
    source has not finished (``validation.check_whole_days``), unless ``allow_missing``."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    sessions = calendar.trading_days(start, end)
    rows_per_block = load_cells // CELLS_A_PRICE_ROW
    around_from, around_to = anchor_sessions(calendar, start, end)
    around, priced, names = [], set(), set()
    counts = {"rows": 0, "suspended": 0, "blocks": 0}
    listed = {"before": set() if allow_missing else wh.instruments_before(con, start)}  # the session before a day's
    staging = f"{wh.PRICES}{wh.STAGING}"

    def read(i: int, j: int) -> pd.DataFrame:
        """The rows of sessions[i:j], validated; ``around`` gathers the source's rows of the sessions around the range."""
        block = sessions[i:j]
        rows = source.prices(around_from if i == 0 else block[0], around_to if j == len(sessions) else block[-1])
        inside = rows["date"].between(block[0], block[-1])
        around.append(rows[~inside])
        rows = rows[inside]
        if rows.empty:
            first, final = source.span()
            raise NoRows(f"{describe} has no rows between {pd.Timestamp(block[0]).date()} and "
                         f"{pd.Timestamp(block[-1]).date()} (it covers {first}..{final}); nothing was written")
        check_sessions(rows["date"], block, describe, calendar.name, calendar.matched)
        if not allow_missing:
            listed["before"] = check_whole_days(rows, listed["before"], describe)
        priced.update(rows["instrument"][rows["close"].notna()])
        names.update(rows["instrument"].unique())
        counts["rows"] += len(rows)
        counts["suspended"] += int(rows["close"].isna().sum())
        counts["blocks"] += 1
        if len(sessions) > FIRST_BLOCK:
            log(f"read to {pd.Timestamp(block[-1]).date()}: {j:,} of {len(sessions):,} sessions, {counts['rows']:,} rows")
        return rows

    blocks = (rows for _, rows in read_in_blocks(sessions, rows_per_block, read))
    if len(sessions) <= FIRST_BLOCK:  # one read, as a day's run
        (rows,) = blocks
        anchored, unanchored = _anchored(con, source, start, end, priced, around)
        wh.write_prices(con, rows, start, end, calendar=calendar.key, replace=replace, scale=anchored.scale)
    else:
        wh.ensure_table(con, wh.PRICES, wh.DDL[wh.PRICES])  # and its schema, where the staging table goes
        con.execute(f"CREATE OR REPLACE TABLE {staging} ({wh.DDL[wh.PRICES]})")  # one a killed run left goes too
        try:
            with wh.streamed_inserts(con) as insert:
                for rows in blocks:
                    insert(staging, pa.Table.from_pandas(rows[list(PRICE_COLUMNS)], schema=STAGED, preserve_index=False))
            anchored, unanchored = _anchored(con, source, start, end, priced, around)
            wh.write_prices(con, staging, start, end, calendar=calendar.key, replace=replace, scale=anchored.scale)
        finally:
            con.execute(f"DROP TABLE IF EXISTS {staging}")
    return Ingested(counts["rows"], len(names), counts["suspended"], pd.Timestamp(sessions[0]),
                    pd.Timestamp(sessions[-1]), counts["blocks"], anchored, unanchored)


def _anchored(con, source, start, end, priced, around) -> tuple[Anchored, list[str]]:
    return anchor_to_warehouse(con, source, start, end, priced, pd.concat(around, ignore_index=True))
