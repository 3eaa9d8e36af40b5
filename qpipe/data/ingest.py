"""A range of the source's days into raw.prices: read in blocks of sessions, each validated as it comes, put on the
warehouse's adjustment basis and written in one transaction.

A day's increment is one read (the day and the ``ANCHOR_SESSIONS`` around it, to anchor on) and one write. A long
range, years of thousands of stocks, is read in blocks of about ``load_cells`` / ``CELLS_A_PRICE_ROW`` price rows
(the first block of ``FIRST_BLOCK`` sessions sizes the others), each streamed into a staging table by one INSERT
statement (``wh.streamed_inserts``: its row groups go to the file as they fill) and put in place with each stock's
scale (``qpipe.data.anchoring``) by one transaction: the run holds one block, not the range, and a bad row in any block
fails it before anything is written. The source's rows are read once: the sessions before the range with the first
block, those after it with the last.
"""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from qpipe.data import lake
from qpipe.data import warehouse as wh
from qpipe.data.anchoring import ANCHOR_SESSIONS, Anchored, anchor_to_warehouse
from qpipe.data.validation import CELLS_A_PRICE_ROW, PRICE_COLUMNS, check_sessions, check_whole_day, first_few
from qpipe.settings import LOAD_CELLS

FIRST_BLOCK = 60  # sessions of the first read (a range of at most this many is one read); its rows size the others
STAGED = pa.schema([("date", pa.timestamp("ns")), ("instrument", pa.string()),
                    *((column, pa.float64()) for column in PRICE_COLUMNS[2:])])


class NoRows(ValueError):
    """The source has no rows on a block of the range's sessions (or the range has none): nothing was written."""


@dataclass(frozen=True)
class Ingested:
    rows: int
    instruments: int
    suspended: int
    idle: list[str]  # "date instrument" of the rows with prices and no volume (stored suspended where so asked)
    first: pd.Timestamp
    last: pd.Timestamp
    blocks: int
    anchored: Anchored
    unanchored: list[str]  # stocks with stored prices outside the range that nothing anchors
    # "date: k of n": sessions on which many stocks' rows are empty (a vendor's failed download stored as suspensions?)
    emptied: list[str]
    # "date instrument": the stored sessions a stock back from days without rows lacks, and the source's rows before
    # the range that the warehouse lacks
    unstored: list[str]


EMPTIED = (5, 0.3)  # a session with more empty rows than both (a count, a share of its rows) is named
GAP_SEARCH = pd.Timedelta(days=366)  # how far back a stock's last stored day is looked for (_unstored)


def read_in_blocks(sessions: np.ndarray, rows_per_block: int, read: Callable[[int, int], pd.DataFrame]
                   ) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """(block, its rows) for blocks of ``sessions`` (``read(i, j)``: the rows of sessions[i:j]): the first
    ``FIRST_BLOCK`` sessions, then each as many as ``rows_per_block`` rows fill at the rows a session of the last
    block had, and at most four times as many sessions as it."""
    done, size = 0, FIRST_BLOCK
    while done < len(sessions):
        block = sessions[done:done + size]
        rows = read(done, done + len(block))
        yield block, rows
        done += len(block)
        # at most 4x the last: a history whose first sessions hold a few stocks would make the next block all the rest
        size = max(1, min(4 * len(block), int(rows_per_block // max(len(rows) / len(block), 1))))


def anchor_sessions(calendar, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The range widened by the ANCHOR_SESSIONS sessions before and after it (none after today)."""
    span = pd.Timedelta(days=5 * ANCHOR_SESSIONS)
    before = calendar.trading_days(start - span, start)[-ANCHOR_SESSIONS - 1:]
    after = calendar.trading_days(end, min(end + span, pd.Timestamp(calendar.today())))[:ANCHOR_SESSIONS + 1]
    return pd.Timestamp(before[0]), pd.Timestamp(after[-1]) if len(after) else end


def idle_rows(rows: pd.DataFrame, benchmark: str = "") -> pd.Series:
    """Rows with prices and no volume (0 or missing): days without a trade, which Qlib's data collector empties (its
    exchange then takes the stock as suspended, as qpipe's backtest does). Not the benchmark's: an index may be
    published without a volume."""
    return rows["close"].notna() & ~(rows["volume"] > 0) & (rows["instrument"] != benchmark)


def ingest_prices(con: duckdb.DuckDBPyConnection, source, calendar, start: pd.Timestamp, end: pd.Timestamp,
                  describe: str, replace: bool = False, load_cells: int = LOAD_CELLS, allow_missing: bool = False,
                  suspend_idle: bool = False, benchmark: str = "",
                  log: Callable[[str], None] = lambda line: None) -> Ingested:
    """Replace the stored prices of the sessions [start, end] with the source's (see the module's docstring).

    The source's last day, where it is the range's, without rows for more than a few of the instruments the session
    before had, is refused as a day the source has not finished (``validation.check_whole_day``), unless
    ``allow_missing``. ``suspend_idle``: rows with prices and no volume are stored as suspended days, as Qlib's
    collector stores them."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    sessions = calendar.trading_days(start, end)
    if len(sessions) == 0:
        raise NoRows(f"no session of {calendar.name} between {start.date()} and {end.date()}; nothing was written")
    rows_per_block = load_cells // CELLS_A_PRICE_ROW
    around_from, around_to = anchor_sessions(calendar, start, end)
    around, priced, names, idle, emptied = [], set(), set(), [], []
    firsts: dict[str, pd.Timestamp] = {}  # each stock's first row in the range
    counts = {"rows": 0, "suspended": 0, "blocks": 0}
    last_two: list[set[str]] = [set(), set()]  # the instruments of the last two sessions read
    # a fixed name in a DuckDB file (one writer at a time); on a lake, where writers do not take turns, one per run
    staging = f"{wh.PRICES}{wh.STAGING}" + (f"_{uuid.uuid4().hex[:12]}" if lake.is_lake(con) else "")

    def read(i: int, j: int) -> pd.DataFrame:
        """The rows of sessions[i:j], validated; ``around`` gathers the source's rows of the sessions around them."""
        block = sessions[i:j]
        rows = source.prices(around_from if i == 0 else block[0], around_to if j == len(sessions) else block[-1])
        quiet = idle_rows(rows, benchmark)
        if suspend_idle:
            rows.loc[quiet, list(PRICE_COLUMNS[2:])] = np.nan
        inside = rows["date"].between(block[0], block[-1])
        idle.extend(f"{d:%Y-%m-%d} {name}" for d, name in rows.loc[quiet & inside, ["date", "instrument"]].itertuples(
            index=False))
        around.append(rows[~inside])
        quiet, rows = quiet[inside], rows[inside]
        if rows.empty:
            first, final = source.span()
            raise NoRows(f"{describe} has no rows between {pd.Timestamp(block[0]).date()} and "
                         f"{pd.Timestamp(block[-1]).date()} (it covers {first}..{final}); nothing was written")
        early = block[block < rows["date"].min().to_datetime64().astype("datetime64[D]")]
        if len(early):  # sessions before the source's first row: a range that starts too early, not a gap
            first, final = source.span()
            if np.datetime64(first, "D") > early[-1]:
                raise NoRows(f"{describe} starts on {first}, after {len(early)} sessions of this range "
                             f"({first_few(early)}; it covers {first}..{final}): materialize from {first} on; "
                             "nothing was written")
        check_sessions(rows["date"], block, describe, calendar.name, calendar.matched)
        empty = rows["close"].isna() & ~quiet if suspend_idle else rows["close"].isna()  # (not suspend_idle's: traded)
        per_day = empty.groupby(rows["date"]).agg(["sum", "size"])
        emptied.extend(f"{d:%Y-%m-%d}: {k} of {n}" for d, k, n in zip(per_day.index, per_day["sum"], per_day["size"])
                       if k > EMPTIED[0] and k > EMPTIED[1] * n)
        for name, first in rows.groupby("instrument")["date"].min().items():
            firsts.setdefault(name, first)
        for day in block[-2:]:
            last_two[:] = [last_two[1], set(rows["instrument"][rows["date"] == day])]
        priced.update(rows["instrument"][rows["close"].notna()])
        names.update(rows["instrument"].unique())
        counts["rows"] += len(rows)
        counts["suspended"] += int(rows["close"].isna().sum())
        counts["blocks"] += 1
        if len(sessions) > FIRST_BLOCK:
            log(f"read to {pd.Timestamp(block[-1]).date()}: {j:,} of {len(sessions):,} sessions, "
                f"{counts['rows']:,} rows")
        return rows

    def whole_last_day() -> None:
        """Where the source has nothing after the range, its last day is the range's: a day it may not have finished."""
        if allow_missing or any((rows["date"] > end).any() for rows in around):
            return
        if len(sessions) > 1:
            before = last_two[0]
        else:  # the session before, where it is stored
            previous = calendar.trading_days(around_from, start)[-2:-1]
            before = wh.instruments_on(con, previous[0]) if len(previous) else set()
        check_whole_day(sessions[-1], last_two[1], before, describe)

    blocks = (rows for _, rows in read_in_blocks(sessions, rows_per_block, read))
    if len(sessions) <= FIRST_BLOCK:  # one read, as a day's run
        (rows,) = blocks
        whole_last_day()
        anchored, unanchored = _anchored(con, source, start, end, priced, around)
        wh.write_prices(con, rows, start, end, calendar=calendar.key, replace=replace, scale=anchored.scale)
    else:
        wh.ensure_table(con, wh.PRICES, wh.DDL[wh.PRICES])  # and its schema, where the staging table goes
        con.execute(f"CREATE OR REPLACE TABLE {staging} ({wh.DDL[wh.PRICES]})")  # one a killed run left goes too
        try:
            with wh.streamed_inserts(con) as insert:
                for rows in blocks:
                    insert(staging, pa.Table.from_pandas(rows[list(PRICE_COLUMNS)], schema=STAGED,
                                                         preserve_index=False))
            whole_last_day()
            anchored, unanchored = _anchored(con, source, start, end, priced, around)
            wh.write_prices(con, staging, start, end, calendar=calendar.key, replace=replace, scale=anchored.scale)
        finally:
            con.execute(f"DROP TABLE IF EXISTS {staging}")
    return Ingested(counts["rows"], len(names), counts["suspended"], idle, pd.Timestamp(sessions[0]),
                    pd.Timestamp(sessions[-1]), counts["blocks"], anchored, unanchored, emptied,
                    _unstored(con, firsts, pd.concat(around, ignore_index=True), start))


def _unstored(con: duckdb.DuckDBPyConnection, firsts: dict[str, pd.Timestamp], around: pd.DataFrame,
              start: pd.Timestamp) -> list[str]:
    """"date instrument" of what the warehouse lacks before ``start``: the stored sessions between a stock's last stored
    row (up to GAP_SEARCH back) and its first row of the range, its suspended days as Qlib's dump_bin writes them
    (tabular.py), and the source's rows it read before the range (to anchor on) that a vendor added late. A run writes
    its own sessions only, so they are named (found in review: the schedule never stored a suspension's days, in
    silence; then only its last 10 were named)."""
    if not firsts or not wh.has_table(con, wh.PRICES):
        return []
    earliest = (start - GAP_SEARCH).date()
    registered = {"_firsts": pd.DataFrame({"instrument": list(firsts), "first": list(firsts.values())}),
                  "_before": around.loc[around["date"] < start, ["date", "instrument"]]}
    for name, frame in registered.items():
        con.register(name, frame)
    try:
        missing = con.execute(f"""
            WITH stored AS (SELECT date, instrument FROM {wh.PRICES} WHERE date >= ? AND date < ?),
                 sessions AS (SELECT DISTINCT date FROM stored),
                 last AS (SELECT instrument, max(date) AS last FROM stored GROUP BY 1)
            SELECT strftime(s.date, '%Y-%m-%d') || ' ' || l.instrument FROM last l
              JOIN _firsts f USING (instrument) JOIN sessions s ON s.date > l.last AND s.date < CAST(f.first AS DATE)
            UNION
            SELECT strftime(b.date, '%Y-%m-%d') || ' ' || b.instrument FROM _before b
            WHERE CAST(b.date AS DATE) IN (SELECT date FROM sessions)
              AND NOT EXISTS (SELECT 1 FROM stored p WHERE p.date = CAST(b.date AS DATE) AND p.instrument = b.instrument)
            ORDER BY 1""", [earliest, start.date()]).fetchall()
    finally:
        for name in registered:
            con.unregister(name)
    return [row[0] for row in missing]


def _anchored(con, source, start, end, priced, around) -> tuple[Anchored, list[str]]:
    return anchor_to_warehouse(con, source, start, end, priced, pd.concat(around, ignore_index=True))
