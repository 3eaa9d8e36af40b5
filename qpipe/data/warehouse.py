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


def insert(con: duckdb.DuckDBPyConnection, table: str, data: pd.DataFrame | pa.Table) -> None:
    """Append rows, matching columns by the table's column order."""
    if len(data) == 0:
        return
    con.register("_incoming", data)
    try:
        columns = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
        quoted = ", ".join(f'"{c}"' for c in columns)
        con.execute(f"INSERT INTO {table} SELECT {quoted} FROM _incoming")
    finally:
        con.unregister("_incoming")


def delete_range(con: duckdb.DuckDBPyConnection, table: str, start, end, date_column: str = "date") -> None:
    con.execute(f"DELETE FROM {table} WHERE {date_column} BETWEEN ? AND ?",
                [pd.Timestamp(start).date(), pd.Timestamp(end).date()])


def write_prices(con: duckdb.DuckDBPyConnection, start, end, prices: pd.DataFrame | None = None,
                 universe: pd.DataFrame | None = None, concepts: pd.DataFrame | None = None) -> None:
    """In one transaction: prices for [start, end], and the small source-wide universe and concept tables."""
    for table, cols in DDL.items():
        ensure_table(con, table, cols)
    with transaction(con):
        if prices is not None:
            delete_range(con, PRICES, start, end)
            insert(con, PRICES, prices)
        for table, frame in ((UNIVERSE, universe), (CONCEPTS, concepts)):
            if frame is not None:
                con.execute(f"DELETE FROM {table}")
                insert(con, table, frame)


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                       [schema, name]).fetchone()[0] > 0


def connect(path: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), read_only=read_only)


