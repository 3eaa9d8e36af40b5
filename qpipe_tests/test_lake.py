"""The warehouse as a DuckLake, for workers that share no DuckDB file: a real PostgreSQL catalog on loopback and
Parquet files in a folder; every connection an in-memory DuckDB of its own process."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from qpipe.assets.features import feature_tables, label_table
from qpipe.assets.prices import raw_prices
from qpipe.data import lake
from qpipe.data import warehouse as wh
from qpipe.deploy.postgres import LocalPostgres
from qpipe.features import store
from qpipe.resources import Compute, PriceSource, Warehouse
from qpipe_tests.test_features_asset import FIRST, LAST, alpha360_broken_at_block

pytestmark = pytest.mark.lake  # run with the lake extra: pytest -m lake
TABLES = ("raw.prices", "features.alpha158", "features.alpha360", "features.label")


@pytest.fixture(scope="module")
def postgres():
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def new_lake(postgres, tmp_path, request):
    """A Warehouse on a lake of its own: a fresh catalog database, a fresh data folder."""
    def make(name: str = "lake") -> Warehouse:
        database = postgres.create_database(f"{request.node.name.split('[')[0][:40]}_{name}".lower())
        return Warehouse(database=str(tmp_path / "never.duckdb"), lake=f"postgres:{postgres.libpq(database)}",
                         lake_data=str(tmp_path / name))
    return make


def _materialize(warehouse: Warehouse, assets, start: str, end: str, **compute) -> None:
    resources = {"warehouse": warehouse, "compute": Compute(threads=1, **compute),
                 "price_source": PriceSource(kind="synthetic", n_instruments=40, seed=11)}
    result = dg.materialize(assets, resources=resources, selection=assets,
                            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})
    assert result.success


def _contents(warehouse: Warehouse, tables=TABLES) -> dict[str, tuple]:
    with warehouse.get_connection() as con:
        return {t: con.execute(f"SELECT count(*), count(DISTINCT (date, instrument)), sum(hash(x)) FROM {t} x").fetchone()
                for t in tables}


@pytest.fixture(scope="module")
def on_file(tmp_path_factory) -> Warehouse:
    """The same history in the single DuckDB file, the zero-setup default: what the lake must equal."""
    warehouse = Warehouse(database=str(tmp_path_factory.mktemp("file") / "warehouse.duckdb"))
    _materialize(warehouse, [raw_prices], FIRST, LAST)
    _materialize(warehouse, [feature_tables, label_table], FIRST, LAST)
    _materialize(warehouse, [feature_tables, label_table], "2024-06-03", "2024-06-03")
    return warehouse


def test_the_assets_write_the_same_tables_to_a_lake_as_to_the_duckdb_file(on_file, new_lake, tmp_path):
    warehouse = new_lake()
    _materialize(warehouse, [raw_prices], FIRST, LAST)
    _materialize(warehouse, [feature_tables, label_table], FIRST, LAST, block_cells=2_000)  # blocks, one transaction
    _materialize(warehouse, [feature_tables, label_table], "2024-06-03", "2024-06-03")  # a day's increment
    assert _contents(warehouse) == _contents(on_file)
    files = {p.suffix for p in Path(warehouse.lake_data).rglob("*") if p.is_file()}
    assert files == {".parquet"}  # the data are Parquet files, the catalog is in PostgreSQL: no DuckDB file anywhere
    assert not list(tmp_path.rglob("*.duckdb"))
    with warehouse.get_connection() as con:
        assert lake.is_lake(con)
        tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'qpipe'").fetchall()
    assert {"alpha158", "alpha360", "label", "prices"} <= {t for (t,) in tables}


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from qpipe.data import warehouse as wh
    from qpipe.features import store
    from qpipe.resources import Warehouse
    catalog, data, feature_set, start, end, meet = sys.argv[1:]
    delete_range = wh.delete_range

    def delete_then_meet(*args, **kwargs):  # inside the write's transaction: wait there for the other writers
        delete_range(*args, **kwargs)
        Path(meet, f"{feature_set} {start}").touch()
        while len(list(Path(meet).iterdir())) < int(Path(meet).name):
            time.sleep(0.01)

    wh.delete_range = delete_then_meet
    warehouse = Warehouse(database="unused", lake=catalog, lake_data=data)
    with warehouse.get_connection() as con:
        print(store.write_features(con, [store.FEATURE_SETS[feature_set]], start, end, block_cells=2_000))
""")


def _writers(warehouse: Warehouse, jobs: list[tuple[str, str, str]], tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """Each (feature set, start, end) written by a process of its own, their transactions open at the same time:
    each deletes its range, then waits inside its transaction until every other has deleted too."""
    meet = tmp_path / f"{len(jobs)}"
    shutil.rmtree(meet, ignore_errors=True)
    meet.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, warehouse.lake, warehouse.lake_data, *job, str(meet)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for job in jobs]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in processes]


def test_processes_write_one_lake_at_once_and_a_conflict_fails_whole(on_file, new_lake, tmp_path):
    """Two processes write two tables at the same moment: both commit. Two write one table at the same moment:
    DuckLake's optimistic concurrency lets one commit, and the other fails whole, naming the conflict; the table
    holds no row of it, and the same write run again succeeds. The lake ends equal to the DuckDB file."""
    warehouse = new_lake()
    _materialize(warehouse, [raw_prices], FIRST, LAST)
    _materialize(warehouse, [label_table], FIRST, LAST)

    both_tables = _writers(warehouse, [("alpha158", FIRST, LAST), ("alpha360", FIRST, LAST)], tmp_path)
    assert [p.returncode for p in both_tables] == [0, 0], [p.stderr[-2000:] for p in both_tables]
    assert _contents(warehouse) == _contents(on_file)

    one_table = _writers(warehouse, [("alpha360", "2024-02-01", "2024-03-28"), ("alpha360", "2024-04-01", LAST)],
                         tmp_path)
    failed = [p for p in one_table if p.returncode]
    assert len(failed) == 1 and "Transaction conflict" in failed[0].stderr, [p.stderr[-2000:] for p in one_table]
    assert _contents(warehouse) == _contents(on_file)  # no duplicate, no missing row: the loser wrote nothing
    rerun = _writers(warehouse, [tuple(failed[0].args[-4:-1])], tmp_path)
    assert rerun[0].returncode == 0, rerun[0].stderr[-2000:]
    assert _contents(warehouse) == _contents(on_file)


def test_a_step_whose_commit_lost_a_race_on_its_table_runs_again_and_writes_it_whole(on_file, new_lake, monkeypatch):
    """A real race: while the label step's transaction is open, another DuckDB (as on another worker) commits
    labels to the same table. The step's commit fails with DuckLake's Transaction conflict, and Dagster runs the
    step again (RetryRequested from the warehouse resource); the second try commits."""
    warehouse = new_lake().model_copy(update={"conflict_retries": 1})
    _materialize(warehouse, [raw_prices], FIRST, LAST)
    _materialize(warehouse, [raw_prices], "2024-06-03", "2024-06-03")
    _materialize(warehouse, [label_table], FIRST, "2024-03-28")
    rival, delete_range, raced = warehouse.model_copy(), wh.delete_range, []

    def delete_then_race(con, table, *args, **kwargs):
        delete_range(con, table, *args, **kwargs)
        if not raced:  # the first try only: the rival commits while this transaction is open
            raced.append(table)
            with rival.get_connection() as other:
                store.write_labels(other, "2024-02-01", "2024-03-28")

    monkeypatch.setattr(wh, "delete_range", delete_then_race)
    result = dg.materialize([label_table], resources={"warehouse": warehouse, "compute": Compute(threads=1)},
                            tags={"dagster/asset_partition_range_start": "2024-04-01",
                                  "dagster/asset_partition_range_end": LAST}, raise_on_error=False)
    events = [e.event_type_value for e in result.all_events]
    assert result.success and raced == [store.LABEL_TABLE], events
    assert events.count("STEP_UP_FOR_RETRY") == 1 and events.count("STEP_RESTARTED") == 1, events
    retried = next(e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")
    assert "Transaction conflict" in str(retried.event_specific_data.error), retried.event_specific_data.error
    _materialize(warehouse, [label_table], "2024-06-03", "2024-06-03")
    assert _contents(warehouse, ["features.label"]) == _contents(on_file, ["features.label"])


def test_a_failure_in_a_later_block_writes_nothing_to_the_lake(on_file, new_lake):
    warehouse = new_lake()
    _materialize(warehouse, [raw_prices], FIRST, LAST)
    _materialize(warehouse, [feature_tables], FIRST, LAST)
    before = _contents(warehouse, TABLES[:3])
    broken, calls = alpha360_broken_at_block(2)
    with warehouse.get_connection() as con:
        with pytest.raises(RuntimeError, match="a broken block"):
            store.write_features(con, [store.FEATURE_SETS["alpha158"], broken], FIRST, LAST, block_cells=2_000)
    assert calls == [1, 2] and _contents(warehouse, TABLES[:3]) == before


def test_a_duckdb_file_is_imported_whole_and_never_over_a_table_the_lake_has(on_file, new_lake):
    warehouse = new_lake()
    with warehouse.get_connection() as con:
        copied = lake.import_file(con, on_file.database)
    assert set(TABLES) <= set(copied) and copied["features.alpha158"] == _contents(on_file)["features.alpha158"][0]
    assert _contents(warehouse) == _contents(on_file)
    with warehouse.get_connection() as con:
        with pytest.raises(ValueError, match="the lake already has .*raw.prices.*: nothing was imported"):
            lake.import_file(con, on_file.database)
    assert _contents(warehouse) == _contents(on_file)
