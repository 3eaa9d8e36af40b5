"""Warehouse writes are transactions: a write that fails half-way leaves every row as it was; a writer
waits for another process that has the file open."""

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from qpipe.data import lake
from qpipe.data import warehouse as wh
from qpipe.data.sources import load_source
from qpipe.resources import DamagedWarehouse, Warehouse, WarehouseBusy
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


def test_a_sources_own_dates_of_another_market_are_refused(tmp_path):
    """Found in review: under QPIPE_CALENDAR=auto every CSV source was stamped "tabular dates", so a warehouse of New
    York's prices took Tokyo's. The stamp names the exchange the dates match; a warehouse stamped before that takes
    the first calendar it is given, then holds it."""
    from qpipe.calendar import data_calendar, exchange_calendar

    batch = load_source("synthetic", n_instruments=30, seed=2)
    day = batch.between("2024-06-03", "2024-06-03")
    new_york = data_calendar("dates of us.csv", "tabular dates", exchange_calendar("XNYS").trading_days("2023-01-03",
                                                                                                      "2024-06-28"))
    tokyo = data_calendar("dates of jp.csv", "tabular dates", exchange_calendar("XTKS").trading_days("2023-01-04",
                                                                                                   "2024-06-28"))
    assert (new_york.key, tokyo.key) == ("tabular dates (XNYS hours)", "tabular dates (XTKS hours)")
    for stamped in ("tabular dates (XNYS hours)", "tabular dates"):  # the latter: a warehouse of the version before
        path = tmp_path / f"{stamped}.duckdb"
        with duckdb.connect(str(path)) as con:
            wh.write_prices(con, day, "2024-06-03", "2024-06-03", calendar=stamped)
            wh.write_prices(con, day, "2024-06-03", "2024-06-03", calendar=new_york.key)
            with pytest.raises(wh.CalendarMismatch, match=r"holds prices on the tabular dates \(XNYS hours\) calendar, "
                                                          r"and the configured one is tabular dates \(XTKS hours\)"):
                wh.write_prices(con, day, "2024-06-03", "2024-06-03", calendar=tokyo.key)
        assert table_rows(path, wh.CALENDAR) == [(new_york.key,)]


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold(path, seconds: float) -> subprocess.Popen:
    """Another process (as a run of another Dagster instance would) with the warehouse open for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_writer_waits_for_another_process_instead_of_failing_on_the_lock(tmp_path, monkeypatch, caplog):
    import qpipe.resources

    monkeypatch.setattr(qpipe.resources, "WAIT_WARNING_SECONDS", 1.5)
    path = tmp_path / "warehouse.duckdb"
    holder = _hold(path, 4.0)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dagster"):
        with Warehouse(database=str(path)).get_connection() as con:  # DuckDB alone: "Could not set lock on file"
            waited = time.monotonic() - began
            con.execute("INSERT INTO held VALUES (1)")
    holder.wait(timeout=30)
    assert 2.0 < waited < 30
    # A line at once (steps of one run take turns reading it: no news), a warning when the wait goes on.
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "waiting for the warehouse" in r.getMessage()]
    assert [level for level, _ in lines] == [logging.INFO, logging.WARNING], lines
    assert f"process {holder.pid} has it open" in lines[0][1] and re.search(r", for \d+ s now;", lines[1][1]), lines
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM held").fetchall() == [(1,)]


def test_a_warehouse_held_too_long_is_a_clear_error_naming_the_process(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    holder = _hold(path, 30.0)
    try:
        with pytest.raises(WarehouseBusy, match=rf"the warehouse .*warehouse.duckdb is still open in process {holder.pid} "
                                                r"after \d+ s .*nothing was written"):
            with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection():
                pass
    finally:
        holder.kill()


def test_a_damaged_warehouse_file_is_named_as_damaged_and_left_as_it_is(tmp_path):
    """Found by a user: a warehouse copied while a run wrote it failed every step with DuckDB's 'Could not read
    enough bytes from file', which names neither the cause nor what to do."""
    path = tmp_path / "warehouse.duckdb"
    with Warehouse(database=str(path)).get_connection() as con:
        con.execute("CREATE TABLE scores AS SELECT range AS i, random() AS x FROM range(2000000)")
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DamagedWarehouse, match=r"the warehouse .*warehouse.duckdb is damaged: DuckDB cannot read it "
                                               r"\(IO Error: Could not read enough bytes.*Nothing was written"):
        with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection():
            pass
    assert path.read_bytes() == whole[:len(whole) // 2]
    # found in review: bytes overwritten mid-file fail a block's checksum, and DuckDB's message names no file
    damaged = bytearray(whole)
    damaged[len(whole) // 2:len(whole) // 2 + 4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(damaged))
    with pytest.raises(DamagedWarehouse, match=r"the warehouse .*warehouse.duckdb is damaged: DuckDB cannot read it "
                                               r"\(Corrupt database file: computed checksum .*Nothing was written"):
        with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection() as con:
            con.execute("SELECT sum(x) FROM scores").fetchall()
    assert path.read_bytes() == bytes(damaged)


CRASH = ("import duckdb, os, sys; con = duckdb.connect(sys.argv[1]); con.execute(\"SET checkpoint_threshold='10GB'\"); "
         "con.execute('PRAGMA disable_checkpoint_on_shutdown'); con.execute(sys.argv[2]); os._exit(9)")


def _crash_during(path: Path, sql: str) -> None:
    """A process that commits ``sql`` and dies before the checkpoint: the rows are in the .wal, not the file."""
    subprocess.run([sys.executable, "-c", CRASH, str(path), sql], check=False, timeout=60)
    assert Path(f"{path}.wal").exists()


def test_a_warehouse_cut_short_that_duckdb_would_write_into_is_refused_before_any_write(tmp_path):
    """Found in review: a file cut in half whose catalog is in its first half opens, and DuckDB wrote a day into
    it; the file grew back, zero-filled, and the damage then showed only when a step read a lost block."""
    path = tmp_path / "warehouse.duckdb"
    with Warehouse(database=str(path)).get_connection() as con:
        con.execute("CREATE TABLE small AS SELECT 1 AS i")
        con.execute("CHECKPOINT")
        con.execute("CREATE TABLE scores AS SELECT range AS i, random() AS x FROM range(2000000)")
    half = path.read_bytes()[:path.stat().st_size // 2]
    path.write_bytes(half)
    with duckdb.connect(str(path)) as con:  # what DuckDB alone does with it
        con.execute("INSERT INTO small VALUES (2)")
    path.write_bytes(half)
    refused = rf"the warehouse .*warehouse.duckdb is damaged: it is {len(half):,} bytes, and its block \d+ in use " \
              r"\(of 262,144 bytes\) ends at [\d,]+\. .*Nothing was written"
    with pytest.raises(DamagedWarehouse, match=refused):
        with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection() as con:
            con.execute("INSERT INTO small VALUES (2)")
    assert path.read_bytes() == half
    # found in code review: with a .wal beside it, the refusal's close wrote the log's rows into the file
    _crash_during(path, "INSERT INTO small VALUES (5)")
    with pytest.raises(DamagedWarehouse, match=refused):
        with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection():
            pass
    assert path.read_bytes() == half and Path(f"{path}.wal").exists()


def test_a_warehouse_cut_short_after_a_table_was_dropped_is_refused(tmp_path):
    """Found in code review: after a DROP the blocks in use sit at the file's end, beyond as many blocks as are in
    use; a file cut there passed a check that counted them."""
    path = tmp_path / "warehouse.duckdb"
    with Warehouse(database=str(path)).get_connection() as con:
        con.execute("CREATE TABLE big AS SELECT range AS i, random() AS x FROM range(3000000)")
        con.execute("CHECKPOINT")
        con.execute("CREATE TABLE scores AS SELECT range AS i, random() AS x FROM range(1000000)")
        con.execute("CHECKPOINT")
        con.execute("DROP TABLE big")
    whole = path.read_bytes()
    cut = whole[:len(whole) * 9 // 10 // 4096 * 4096]
    path.write_bytes(cut)
    with pytest.raises(DamagedWarehouse, match=r"is damaged: it is [\d,]+ bytes, and its block \d+ in use"):
        with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection():
            pass
    assert path.read_bytes() == cut
    path.write_bytes(whole)  # whole, it opens
    with Warehouse(database=str(path)).get_connection() as con:
        assert con.execute("SELECT count(*) FROM scores").fetchall() == [(1_000_000,)]


def test_a_copy_restored_beside_the_log_of_the_file_it_replaced_says_to_move_the_log_away(tmp_path):
    """Found in review: 'restore it from a copy' with the crashed run's warehouse.duckdb.wal left beside it gave
    DuckDB's 'Failure while replaying WAL file', with nothing to say the log was the other file's."""
    path = tmp_path / "warehouse.duckdb"
    with Warehouse(database=str(path)).get_connection() as con:
        con.execute("CREATE TABLE prices AS SELECT range AS i FROM range(1000)")
    copy = path.read_bytes()
    with Warehouse(database=str(path)).get_connection() as con:
        con.execute("INSERT INTO prices SELECT range FROM range(10)")
    _crash_during(path, "DELETE FROM prices WHERE i < 5")
    path.write_bytes(copy)
    with pytest.raises(DamagedWarehouse, match=r"its write-ahead log .*warehouse.duckdb.wal is not its own .*Move the "
                                               r"\.wal away"):
        with Warehouse(database=str(path), lock_wait_seconds=1.0).get_connection():
            pass
    Path(f"{path}.wal").rename(tmp_path / "old.wal")
    with Warehouse(database=str(path)).get_connection() as con:
        assert con.execute("SELECT count(*) FROM prices").fetchall() == [(1000,)]


@pytest.mark.parametrize("environment", ["default", pytest.param("lake extra", marks=pytest.mark.lake)])
def test_a_lake_needs_the_lake_extra_and_says_so(tmp_path, environment):
    """QPIPE_LAKE loads DuckLake from its PyPI package built for this DuckDB: without it (the default install, on
    DuckDB 2.0) the step's error names the extra to install; with it (pytest -m lake's environment) it attaches.
    Run in both environments: the default run takes the first case, ``-m lake`` the second."""
    warehouse = Warehouse(database=str(tmp_path / "unused.duckdb"), lake=str(tmp_path / "catalog.ducklake"),
                          lake_data=str(tmp_path / "data"))
    if environment == "lake extra":  # by the case, not by what is installed: a lake environment without DuckLake fails
        with warehouse.get_connection() as con:
            con.execute("CREATE TABLE t AS SELECT range AS x FROM range(10000)")  # past DuckLake's inlined rows
        assert list((tmp_path / "data").rglob("*.parquet"))
    else:
        with pytest.raises(RuntimeError, match=r"QPIPE_LAKE needs duckdb-extension-ducklake built for DuckDB .*lake extra"):
            warehouse.get_connection().__enter__()
    assert not (tmp_path / "unused.duckdb").exists()


def test_a_second_connection_reads_a_warehouse_file_of_any_name(tmp_path):
    """A feature write reads prices through ``wh.cursor`` while its first connection inserts; the file's stem is
    the database's name, and "qpipe-prod 2" must not break the USE it issues."""
    with duckdb.connect(str(tmp_path / 'qpipe-prod 2 "x".duckdb')) as con:
        con.execute("CREATE SCHEMA raw; CREATE TABLE raw.t AS SELECT 42 AS x")
        with wh.cursor(con) as second:
            assert second.execute("SELECT x FROM raw.t").fetchall() == [(42,)]


def test_a_warehouse_file_named_like_the_lake_is_still_a_file(tmp_path):
    """A file's writes are staged and checkpointed, a lake's are not: told apart by the catalog's type, not its name."""
    with duckdb.connect(str(tmp_path / "qpipe.duckdb")) as con:
        assert con.execute("SELECT current_database()").fetchone()[0] == "qpipe"
        assert not lake.is_lake(con)


def test_a_streamed_insert_writes_its_blocks_in_one_statement_and_a_failure_writes_nothing(tmp_path):
    """wh.streamed_inserts: the blocks of a table go into one INSERT (columns matched by name, any order); a block
    the table refuses fails the whole statement and is raised; so does the caller's own error, and neither
    leaves a row of the stream."""
    import pyarrow as pa

    def block(first: int, rows: int = 70_000, name: str = "x") -> pa.Table:
        return pa.table({"b": [name] * rows, "a": list(range(first, first + rows))})

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("CREATE TABLE t (a INTEGER NOT NULL, b VARCHAR)")
        con.execute("CREATE TABLE u (a INTEGER NOT NULL, b VARCHAR)")
        with wh.streamed_inserts(con) as insert:
            for k in range(4):
                insert("t", block(k * 70_000))
                insert("u", block(k, rows=10, name="u"))
        assert con.execute("SELECT count(*), count(DISTINCT a), min(b) FROM t").fetchone() == (280_000, 280_000, "x")
        assert con.execute("SELECT count(*), min(b) FROM u").fetchone() == (40, "u")

        refused = pa.table({"b": ["y"], "a": pa.array([None], pa.int64())})
        with pytest.raises(duckdb.ConstraintException, match="NOT NULL"):
            with wh.streamed_inserts(con) as insert:
                for data in (block(10**6, name="y"), refused, *(block(k, name="y") for k in range(5))):
                    insert("t", data)
        with pytest.raises(RuntimeError, match="the compute failed"):
            with wh.streamed_inserts(con) as insert:
                insert("t", block(2 * 10**6, name="z"))
                insert("u", block(0, rows=10, name="z"))
                raise RuntimeError("the compute failed")
        assert con.execute("SELECT count(*), max(b) FROM t").fetchone() == (280_000, "x")
        assert con.execute("SELECT count(*), max(b) FROM u").fetchone() == (40, "u")
