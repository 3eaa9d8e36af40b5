"""Warehouse writes are transactions: a write that fails half-way leaves every row as it was."""

import duckdb
import pandas as pd
import pytest

from qpipe.data import warehouse as wh
from qpipe.data.sources import load_source
from qpipe_tests.conftest import table_rows


def test_a_write_that_fails_after_its_delete_is_rolled_back(warehouse_path):
    batch = load_source("synthetic", n_instruments=30, seed=2)
    day = batch.prices[batch.prices["date"] == "2024-06-03"]
    with duckdb.connect(str(warehouse_path)) as con:
        wh.write_prices(con, day, "2024-06-03", "2024-06-03", calendar="XNYS")
    before = table_rows(warehouse_path, wh.PRICES)
    broken = day.drop(columns=["factor"])  # the DELETE runs, then the INSERT fails on the missing column
    with duckdb.connect(str(warehouse_path)) as con, pytest.raises(duckdb.BinderException):
        wh.write_prices(con, broken, "2024-06-03", "2024-06-03", calendar="XNYS")
    assert table_rows(warehouse_path, wh.PRICES) == before and len(before) == len(day)


def test_rewriting_a_range_replaces_exactly_that_range(warehouse_path):
    batch = load_source("synthetic", n_instruments=30, seed=2)
    week = batch.between("2024-06-03", "2024-06-07")
    with duckdb.connect(str(warehouse_path)) as con:
        wh.write_prices(con, week, "2024-06-03", "2024-06-07", calendar="XNYS")
        wh.write_prices(con, batch.between("2024-06-05", "2024-06-05"), "2024-06-05", "2024-06-05", calendar="XNYS")
        counts = dict(con.execute("SELECT date, count(*) FROM raw.prices GROUP BY 1").fetchall())
    assert {str(k): v for k, v in counts.items()} == {
        str(d.date()): n for d, n in week.groupby("date").size().items()}
    assert pd.Timestamp("2024-06-05").date() in counts


def test_prices_of_another_calendar_are_refused_and_nothing_changes(warehouse_path):
    batch = load_source("synthetic", n_instruments=30, seed=2)
    day = batch.between("2024-06-03", "2024-06-03")
    with duckdb.connect(str(warehouse_path)) as con:
        wh.write_prices(con, day, "2024-06-03", "2024-06-03", calendar="XNYS")
    before = table_rows(warehouse_path, wh.PRICES)
    with duckdb.connect(str(warehouse_path)) as con, pytest.raises(
            wh.CalendarMismatch, match="holds prices on the XNYS calendar, and the configured one is XSHG"):
        wh.write_prices(con, batch.between("2024-06-04", "2024-06-04"), "2024-06-04", "2024-06-04", calendar="XSHG")
    assert table_rows(warehouse_path, wh.PRICES) == before
    assert table_rows(warehouse_path, wh.CALENDAR) == [("XNYS",)]
