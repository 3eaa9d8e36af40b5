"""The DuckDB warehouse: table layout and atomic, idempotent writes.

Every write replaces a date range (or a whole small table) inside one transaction, so
re-running a day never duplicates rows and a failure leaves the file exactly as it was.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pandas as pd
import pyarrow as pa

PRICES = "raw.prices"
UNIVERSE = "raw.universe"
CONCEPTS = "raw.concepts"

DDL = {
    PRICES: """date DATE NOT NULL, instrument VARCHAR NOT NULL, open DOUBLE, high DOUBLE, low DOUBLE,
               close DOUBLE, vwap DOUBLE, volume DOUBLE, factor DOUBLE""",
    UNIVERSE: "market VARCHAR NOT NULL, instrument VARCHAR NOT NULL, start_date DATE NOT NULL, end_date DATE NOT NULL",
    CONCEPTS: "instrument VARCHAR NOT NULL, concept VARCHAR NOT NULL, kind VARCHAR NOT NULL",
}


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def ensure_table(con: duckdb.DuckDBPyConnection, table: str, columns_sql: str) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns_sql})")


def _insert(con: duckdb.DuckDBPyConnection, table: str, data: pd.DataFrame | pa.Table) -> None:
    con.register("_incoming", data)
    try:
        columns = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
        con.execute(f"INSERT INTO {table} SELECT {', '.join(columns)} FROM _incoming")
    finally:
        con.unregister("_incoming")


def replace_range(con: duckdb.DuckDBPyConnection, table: str, columns_sql: str, data: pd.DataFrame | pa.Table,
                  start, end, date_column: str = "date") -> int:
    """Atomically replace the rows of ``table`` whose ``date_column`` lies in [start, end]."""
    ensure_table(con, table, columns_sql)
    with transaction(con):
        con.execute(f"DELETE FROM {table} WHERE {date_column} BETWEEN ? AND ?",
                    [pd.Timestamp(start).date(), pd.Timestamp(end).date()])
        if len(data):
            _insert(con, table, data)
    return len(data)


def replace_all(con: duckdb.DuckDBPyConnection, table: str, data: pd.DataFrame) -> int:
    ensure_table(con, table, DDL[table])
    with transaction(con):
        con.execute(f"DELETE FROM {table}")
        if len(data):
            _insert(con, table, data)
    return len(data)


def write_prices(con: duckdb.DuckDBPyConnection, start, end, prices: pd.DataFrame | None = None,
                 universe: pd.DataFrame | None = None, concepts: pd.DataFrame | None = None) -> None:
    """In one transaction: prices for [start, end], and the small source-wide universe and concept tables."""
    for table, cols in DDL.items():
        ensure_table(con, table, cols)
    with transaction(con):
        if prices is not None:
            con.execute(f"DELETE FROM {PRICES} WHERE date BETWEEN ? AND ?",
                        [pd.Timestamp(start).date(), pd.Timestamp(end).date()])
            _insert(con, PRICES, prices)
        for table, frame in ((UNIVERSE, universe), (CONCEPTS, concepts)):
            if frame is not None:
                con.execute(f"DELETE FROM {table}")
                _insert(con, table, frame)


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                       [schema, name]).fetchone()[0] > 0


def connect(path: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), read_only=read_only)


