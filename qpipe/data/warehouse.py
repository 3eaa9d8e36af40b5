"""The DuckDB warehouse: table layout and atomic, idempotent writes.

Every write replaces a date range (or a whole small table) inside one transaction, so
re-running a day never duplicates rows and a failure leaves the file exactly as it was.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress

import duckdb
import pandas as pd
import pyarrow as pa

from qpipe.data import lake
from qpipe.data.validation import PRICE_COLUMNS, empty_prices

# DuckDB would otherwise cache up to 80% of RAM. With 1 GB a 300 x 2500 feature backfill peaks at 2.7 GB RSS
# (3.5 GB with 2 GB) and is no slower: the big inserts stream through the buffer pool.
CONNECTION_CONFIG = {"memory_limit": "1GB"}

PRICES = "raw.prices"
UNIVERSE = "raw.universe"
CONCEPTS = "raw.concepts"
PREDICTIONS = "predictions.scores"
CALENDAR = "meta.calendar"
STAGING = "_incoming"  # suffix of the table a large write fills before it replaces a range

DDL = {
    PRICES: """date DATE NOT NULL, instrument VARCHAR NOT NULL, open DOUBLE, high DOUBLE, low DOUBLE,
               close DOUBLE, vwap DOUBLE, volume DOUBLE, factor DOUBLE""",
    UNIVERSE: "market VARCHAR NOT NULL, instrument VARCHAR NOT NULL, start_date DATE NOT NULL, end_date DATE NOT NULL",
    CONCEPTS: "instrument VARCHAR NOT NULL, concept VARCHAR NOT NULL, kind VARCHAR NOT NULL",
    CALENDAR: "name VARCHAR NOT NULL",
}


class CalendarMismatch(ValueError):
    pass


class RowsWouldBeLost(ValueError):
    """A re-ingest would delete stored rows that the source no longer has (a truncated file, lost symbols)."""


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextmanager
def bulk_load(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Settings for writing large float tables, reset afterwards so other tables keep DuckDB's defaults.

    Float features barely compress (2.2 vs 2.9 GB for 300 x 2500) and are written a quarter faster
    uncompressed; not keeping insertion order saves another quarter (every reader sorts its rows).
    """
    con.execute("SET force_compression = 'uncompressed'")
    con.execute("SET preserve_insertion_order = false")
    try:
        yield con
    finally:
        con.execute("RESET force_compression")
        con.execute("RESET preserve_insertion_order")


def checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Checkpoint a small write now, inside ``bulk_load``, rather than leave it to a later commit whose log passed
    16 MB. At 5,000 instruments x 2,500 days, the second daily increment after a backfill took 10 s that way; with
    this, the first took 6.6 s (5.1 s of it the checkpoint, once after a backfill) and the second 1.3 s. (After a
    staged backfill the same checkpoint cost more: 184 s instead of 142 s for the whole backfill.)

    Not on a lake: there CHECKPOINT is DuckLake's maintenance (it compacts files), which fails the commit of any
    writer it overlaps; it belongs to a quiet hour (``python -m qpipe.data.lake maintain``)."""
    if not lake.is_lake(con):
        con.execute("CHECKPOINT")


@contextmanager
def inserts_in_background(con: duckdb.DuckDBPyConnection) -> Iterator[Callable[[str, pa.Table], None]]:
    """``insert(table, data)`` run on a second thread, so the caller computes the next block meanwhile.

    DuckDB releases the GIL while it inserts. One insert runs at a time (the next call waits for it);
    the caller must not use ``con`` until the block ends (read through ``cursor(con)``). On an error
    the insert in flight is interrupted and awaited, so a rollback never races it.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-insert")
    pending: Future | None = None

    def submit(table: str, data: pa.Table) -> None:
        nonlocal pending
        if pending is not None:
            pending.result()
        pending = pool.submit(insert, con, table, data)

    try:
        yield submit
        if pending is not None:
            pending.result()
    except BaseException:
        con.interrupt()
        raise
    finally:
        pool.shutdown(wait=True)


class _Stream:
    """One INSERT statement into ``table`` that reads its rows from a queue as they are put, on a thread of its own."""

    def __init__(self, own: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, close: bool = False):
        """``own``: the connection the statement runs on, used by no other thread while it runs (closed after it
        if ``close``)."""
        self.close = close
        self.queue: queue.Queue = queue.Queue(maxsize=1)  # one block waits while the statement writes another
        self.error: BaseException | None = None
        self.taken_all = False  # the statement took the caller's last item: its end, or its error
        columns = ", ".join(f'"{d[0]}"' for d in own.execute(f"SELECT * FROM {table} LIMIT 0").description)
        own.register("_stream", pa.RecordBatchReader.from_batches(schema, self._batches()))
        self.thread = threading.Thread(target=self._insert, args=(own, f"INSERT INTO {table} SELECT {columns} FROM _stream"),
                                       name=f"duckdb-insert {table}")
        self.thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while isinstance(item := self.queue.get(), pa.Table):
            yield from item.to_batches()
        self.taken_all = True
        if item is not None:  # the caller failed: fail the statement, which then writes nothing
            raise item

    def _insert(self, own: duckdb.DuckDBPyConnection, statement: str) -> None:
        try:
            own.execute(statement)
        except BaseException as error:
            self.error = error
            while not self.taken_all:  # take what the caller still puts, so it never waits on a statement gone
                self.taken_all = not isinstance(self.queue.get(), pa.Table)
        finally:
            if self.close:
                own.close()
            else:  # unless the failed statement aborted the caller's transaction: the next register replaces it
                with suppress(duckdb.TransactionException):
                    own.unregister("_stream")

    def put(self, item: pa.Table | BaseException | None) -> None:
        self.queue.put(item)
        if self.error is not None and isinstance(item, pa.Table):
            raise self.error


@contextmanager
def streamed_inserts(con: duckdb.DuckDBPyConnection, in_transaction: bool = False
                     ) -> Iterator[Callable[[str, pa.Table], None]]:
    """``insert(table, data)``: each table's blocks go into ONE INSERT statement that streams them, on a thread
    per table, while the caller computes the next. Each statement runs on a connection of its own and commits
    alone; ``in_transaction``, the one table's statement runs on ``con``, inside the caller's transaction, and the
    caller reads through ``cursor(con)`` meanwhile. A statement's row groups go to the file as they fill inside a
    transaction too: 10 million rows of scores streamed in one peaked at 0.30 GB RSS, 0.27 GB without one.

    DuckDB writes a statement's full row groups straight into the file as they fill. Blocks inserted one
    statement each went to its log first and were written again at the checkpoint: 300 x 2,500 Alpha158 and
    Alpha360 took 8.1 s that way and 4.8 s streamed, compute included, peaking at 1.8 and 2.5 GB (1,000
    instruments: 21.3 and 15.0 s, 1.8 and 2.5 GB). On an error in the caller every statement fails and writes
    nothing; an error in a statement is raised to the caller at its next block or at the end.
    """
    streams: dict[str, _Stream] = {}

    def insert(table: str, data: pa.Table) -> None:
        if table not in streams:
            if in_transaction and streams:
                raise ValueError(f"one table streams inside a transaction; {next(iter(streams))} already does")
            # else a connection of its own: a connection refuses a second thread's call while it runs one
            own = con if in_transaction else cursor(con)
            streams[table] = _Stream(own, table, data.schema, close=not in_transaction)
        streams[table].put(data)

    try:
        yield insert
    except BaseException as error:
        for stream in streams.values():
            stream.put(error)
            stream.thread.join()
        raise
    for stream in streams.values():
        stream.put(None)
        stream.thread.join()
    for stream in streams.values():
        if stream.error is not None:
            raise stream.error


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A second connection to ``con``'s database, for another thread; it reads the same catalog (``USE`` is per
    connection, and a lake is an attached catalog)."""
    name = con.execute("SELECT current_database()").fetchone()[0]  # a file's stem: "qpipe-prod 2" is a name too
    second = con.cursor()
    second.execute(f'USE "{name.replace(chr(34), chr(34) * 2)}"')
    return second


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                            [schema, name]).fetchall()[0][0])


def days_without_rows(con: duckdb.DuckDBPyConnection, table: str, column: str, days) -> list[str]:
    """The days of ``days`` (datetime64[D], ascending) on which ``table`` has no row by ``column``: days an upstream
    asset was not materialized for."""
    if len(days) == 0:
        return []
    have = {d for (d,) in con.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} BETWEEN ? AND ?",
                                      [days[0].item(), days[-1].item()]).fetchall()}
    return [str(day) for day in days if day.item() not in have]


def ensure_table(con: duckdb.DuckDBPyConnection, table: str, columns_sql: str) -> None:
    if has_table(con, table):  # (no statement that writes: a read-only connection reads through this too)
        return
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns_sql})")


def insert(con: duckdb.DuckDBPyConnection, table: str, data: pd.DataFrame | pa.Table) -> None:
    """Append rows, matching columns by the table's column order."""
    if len(data) == 0:
        return
    columns = ", ".join(f'"{d[0]}"' for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description)
    con.register("_incoming", data)  # a failed INSERT leaves the view registered; the next register replaces it
    con.execute(f"INSERT INTO {table} SELECT {columns} FROM _incoming")
    con.unregister("_incoming")


def delete_range(con: duckdb.DuckDBPyConnection, table: str, start, end, date_column: str = "date") -> None:
    con.execute(f"DELETE FROM {table} WHERE {date_column} BETWEEN ? AND ?",
                [pd.Timestamp(start).date(), pd.Timestamp(end).date()])


NO_ROWS = "0-0000000000000000"
# An order-free digest of rows: each row's hash hashed again before the XOR. DuckDB folds a row's last column into its
# hash by XOR, so under one XOR two rows whose last column changed alike (two members leaving on one day, a factor
# restated on two rows) would cancel out.
ROW_DIGEST = "bit_xor(hash(hash({})))"


def _version(rows: int, digest: int | None) -> str:
    """A data version: "rows-digest" (NO_ROWS for none)."""
    return f"{rows}-{digest or 0:016x}"


def day_versions(con: duckdb.DuckDBPyConnection, table: str, start, end, date_column: str = "date",
                 model: str | None = None) -> dict[str, str]:
    """A digest of ``table``'s rows of each day in [start, end] that has rows (of ``model`` alone, in a table of
    several models), whatever their order: ISO day -> "rows-digest". Steps' Dagster data versions are made of them,
    so that writing the same rows again leaves what depends on them up to date (a whole table's range in a fraction
    of a second)."""
    of_model, params = ("AND model = ?", [model]) if model is not None else ("", [])
    days = con.execute(f"SELECT strftime({date_column}, '%Y-%m-%d'), count(*), {ROW_DIGEST.format('t')} FROM {table} t "
                       f"WHERE {date_column} BETWEEN ? AND ? {of_model} GROUP BY 1",
                       [pd.Timestamp(start).date(), pd.Timestamp(end).date(), *params]).fetchall()
    return {day: _version(rows, digest) for day, rows, digest in days}


def reference_versions(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The digests of the membership and concept tables, by table, such that the spans a daily ingest only extends
    keep them (so the checkpoints trained before stay up to date), while a member that joins or leaves an index (or
    a concept) changes them. A span of an index that reaches its market's last end (a day, or Qlib's 2099-12-31) is
    taken as open; the spans of ``all``, each stock's first to last priced day, count by their start (their end is
    the prices', which have versions of their own: a stock suspended on the last day changes no member)."""
    span = ("(market, instrument, start_date, CASE WHEN market = 'all' OR end_date = max(end_date) OVER "
            "(PARTITION BY market) THEN NULL ELSE end_date END)")
    (rows, digest), = con.execute(f"SELECT count(*), {ROW_DIGEST.format('s')} FROM (SELECT {span} AS s "
                                  f"FROM {UNIVERSE})").fetchall()
    (concepts, concept_digest), = con.execute(f"SELECT count(*), {ROW_DIGEST.format('t')} FROM {CONCEPTS} t").fetchall()
    return {UNIVERSE: _version(rows, digest), CONCEPTS: _version(concepts, concept_digest)}


def range_version(versions: Iterable[str]) -> str:
    """The digest of several days' rows from theirs (``day_versions``): the counts add up, the row hashes XOR."""
    rows, digest = 0, 0
    for version in versions:
        count, day_digest = version.split("-")
        rows, digest = rows + int(count), digest ^ int(day_digest, 16)
    return _version(rows, digest)


def replace_range(con: duckdb.DuckDBPyConnection, table: str, staging: str, start, end) -> None:
    """Put ``staging``'s rows in place of ``table``'s rows dated [start, end] (call it inside a transaction).

    When no stored row lies outside the range (a first backfill, a full rebuild) the staging table
    becomes the table, a rename; otherwise its rows are copied in.
    """
    outside = con.execute(f"SELECT count(*) FROM {table} WHERE date NOT BETWEEN ? AND ?",
                          [pd.Timestamp(start).date(), pd.Timestamp(end).date()]).fetchall()[0][0]
    if outside:
        delete_range(con, table, start, end)
        con.execute(f"INSERT INTO {table} SELECT * FROM {staging}")
    else:
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {staging} RENAME TO {table.split('.')[1]}")


def _refuse_losses(con: duckdb.DuckDBPyConnection, table: str, lost_sql: str, params: list, what: str) -> None:
    """Raise RowsWouldBeLost naming how many stored rows ``lost_sql`` (over the incoming rows) finds, and one."""
    count, example = con.execute(f"SELECT count(*), min(example) FROM ({lost_sql})", params).fetchall()[0]
    if count:
        raise RowsWouldBeLost(
            f"{table}: this ingest would remove {count} stored {what} that the source no longer has (e.g. {example}); "
            "a source that shrank is more often cut short than corrected. Nothing was written. If the removal is "
            "intended, run again with `replace: true` in the asset's config.")


def read_prices(con: duckdb.DuckDBPyConnection, start, end) -> pd.DataFrame:
    """The stored price rows dated [start, end] (none before the first write)."""
    return _price_rows(con, "date BETWEEN ? AND ?", [pd.Timestamp(start).date(), pd.Timestamp(end).date()])


def last_priced_days(con: duckdb.DuckDBPyConnection, instruments: list[str], before) -> pd.DataFrame:
    """The stored rows of each of ``instruments`` on its last day with prices before ``before``."""
    if not instruments:
        return empty_prices()
    return _price_rows(con, "instrument IN (SELECT unnest(?)) AND close IS NOT NULL AND date < ? QUALIFY "
                            "row_number() OVER (PARTITION BY instrument ORDER BY date DESC) = 1",
                       [instruments, pd.Timestamp(before).date()])


def _price_rows(con: duckdb.DuckDBPyConnection, where: str, parameters: list) -> pd.DataFrame:
    if not has_table(con, PRICES):
        return empty_prices()
    frame = con.execute(f"SELECT {', '.join(PRICE_COLUMNS)} FROM {PRICES} WHERE {where}", parameters).df()
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame


def instruments_on(con: duckdb.DuckDBPyConnection, day) -> set[str]:
    """The instruments with a stored row on ``day``."""
    if not has_table(con, PRICES):
        return set()
    return {name for (name,) in con.execute(f"SELECT instrument FROM {PRICES} WHERE date = ?",
                                            [pd.Timestamp(day).date()]).fetchall()}


def instruments_with_prices(con: duckdb.DuckDBPyConnection, instruments: list[str], outside: tuple) -> list[str]:
    """Those of ``instruments`` with a stored price on a day outside [start, end]."""
    if not instruments or not has_table(con, PRICES):
        return []
    start, end = (pd.Timestamp(day).date() for day in outside)
    return [row[0] for row in con.execute(
        f"SELECT DISTINCT instrument FROM {PRICES} WHERE instrument IN (SELECT unnest(?)) AND close IS NOT NULL "
        "AND (date < ? OR date > ?) ORDER BY instrument", [instruments, start, end]).fetchall()]


def write_prices(con: duckdb.DuckDBPyConnection, prices: pd.DataFrame | str, start, end, calendar: str,
                 replace: bool = False, scale: Mapping[str, float] | None = None) -> None:
    """Replace the price rows dated [start, end] in one transaction with ``prices``: a frame, or the name of a
    table that holds them (a long range, staged there block by block).

    A warehouse keeps the calendar its first prices were written on (``calendar``, e.g. "XNYS"): rolling
    features over days of two calendars would be wrong, so prices of another calendar are refused.
    Stored (date, instrument) rows the new ones lack are refused as a loss unless ``replace``.
    An instrument of ``scale`` has its prices and factor multiplied by its k and its volume divided by it: its rows
    on the stored adjustment basis (``qpipe.data.anchoring``).
    """
    for table in (PRICES, CALENDAR):
        ensure_table(con, table, DDL[table])
    registered = {"_incoming": prices} if isinstance(prices, pd.DataFrame) else {}
    if scale:
        registered["_scale"] = pd.DataFrame({"instrument": list(scale), "k": list(scale.values())})
    incoming = "_incoming" if isinstance(prices, pd.DataFrame) else prices
    k = "coalesce(s.k, 1.0)" if scale else "1.0"
    special = {"date": "i.date", "instrument": "i.instrument", "volume": f"i.volume / {k}"}
    values = ", ".join(special.get(c, f"i.{c} * {k}") for c in PRICE_COLUMNS)
    for name, frame in registered.items():
        con.register(name, frame)
    try:
        with transaction(con):
            stamped = next(iter(con.execute(f"SELECT name FROM {CALENDAR}").fetchall()), None)
            if stamped is None:
                con.execute(f"INSERT INTO {CALENDAR} VALUES (?)", [calendar])
            elif calendar.startswith(f"{stamped[0]} ("):  # stamped before a source's dates named their exchange
                con.execute(f"UPDATE {CALENDAR} SET name = ?", [calendar])
            elif stamped[0] != calendar:
                raise CalendarMismatch(
                    f"this warehouse holds prices on the {stamped[0]} calendar, and the configured one is {calendar} "
                    "(QPIPE_CALENDAR and the source): a warehouse keeps one calendar. To move to the new one, point "
                    "QPIPE_HOME at a new folder (or delete the warehouse) and materialize again; nothing was written.")
            if not replace:
                _refuse_losses(con, PRICES, f"""
                    SELECT strftime(p.date, '%Y-%m-%d') || ' ' || p.instrument AS example FROM {PRICES} p
                    WHERE p.date BETWEEN ? AND ? AND NOT EXISTS (
                        SELECT 1 FROM {incoming} i WHERE CAST(i.date AS DATE) = p.date AND i.instrument = p.instrument)""",
                               [pd.Timestamp(start).date(), pd.Timestamp(end).date()], "price rows")
            delete_range(con, PRICES, start, end)
            # in date order, as a day's reads and the zone maps of its row groups want it: the incoming rows are (a
            # frame sorted by validate_prices, blocks staged in order); a join is not
            con.execute(f"INSERT INTO {PRICES} ({', '.join(PRICE_COLUMNS)}) SELECT {values} FROM {incoming} i "
                        + ("LEFT JOIN _scale s ON s.instrument = i.instrument " if scale else "")
                        + "WHERE CAST(i.date AS DATE) BETWEEN ? AND ?"
                        + (" ORDER BY i.date, i.instrument" if scale else ""),
                        [pd.Timestamp(start).date(), pd.Timestamp(end).date()])
    finally:
        for name in registered:
            con.unregister(name)


def write_universe(con: duckdb.DuckDBPyConnection, universe: pd.DataFrame, concepts: pd.DataFrame,
                   replace: bool = False) -> None:
    """Replace the (small, source-wide) membership and concept tables in one transaction.

    Unless ``replace``, a stored membership span must still be there (the same market, instrument
    and start, ending no earlier: spans only grow as days are appended), and so must every concept row.
    """
    for table in (UNIVERSE, CONCEPTS):
        ensure_table(con, table, DDL[table])
    with transaction(con):
        if not replace:
            con.register("_incoming", universe)
            _refuse_losses(con, UNIVERSE, f"""
                SELECT s.market || ' ' || s.instrument || ' from ' || strftime(s.start_date, '%Y-%m-%d') AS example
                FROM {UNIVERSE} s WHERE NOT EXISTS (
                    SELECT 1 FROM _incoming i WHERE i.market = s.market AND i.instrument = s.instrument
                    AND CAST(i.start_date AS DATE) = s.start_date AND CAST(i.end_date AS DATE) >= s.end_date)""",
                           [], "membership spans")
            con.register("_incoming", concepts)
            _refuse_losses(con, CONCEPTS, f"""
                SELECT s.instrument || ' in ' || s.concept AS example FROM {CONCEPTS} s WHERE NOT EXISTS (
                    SELECT 1 FROM _incoming i WHERE i.instrument = s.instrument AND i.concept = s.concept
                    AND i.kind = s.kind)""", [], "concept memberships")
            con.unregister("_incoming")
        for table, frame in ((UNIVERSE, universe), (CONCEPTS, concepts)):
            con.execute(f"DELETE FROM {table}")
            insert(con, table, frame)
