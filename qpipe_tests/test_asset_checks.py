"""Asset checks on a real warehouse: they pass on what qpipe writes, and fail, naming the rows, on what a
broken writer or a hand edit would leave (injected here with SQL)."""

import dagster as dg
import duckdb
import pytest

from qpipe.assets.features import feature_checks, feature_tables, label_table
from qpipe.assets.prices import (prices_are_unique_and_consistent, prices_cover_the_listed_instruments,
                                 prices_have_no_split_like_moves, raw_prices, raw_universe)
from qpipe.resources import Compute, PriceSource, Warehouse

FIRST, LAST = "2024-03-01", "2024-05-31"
ASSETS = [raw_prices, raw_universe, feature_tables, label_table]
CHECKS = [prices_are_unique_and_consistent, prices_cover_the_listed_instruments, prices_have_no_split_like_moves,
          *feature_checks]


def _resources(path) -> dict:
    return {"warehouse": Warehouse(database=str(path)), "compute": Compute(threads=1),
            "price_source": PriceSource(kind="synthetic", n_instruments=30, seed=9)}


def _range(first=FIRST, last=LAST) -> dict:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("checks") / "warehouse.duckdb"
    dg.materialize(ASSETS, selection=[raw_prices, raw_universe], resources=_resources(path), tags=_range("2023-11-01"))
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.assets(feature_tables, label_table)
                            | dg.AssetSelection.checks_for_assets(feature_tables, label_table),
                            resources=_resources(path), tags=_range())
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"a_row_for_every_price_row", "no_all_nan_day", "labels_become_known_two_sessions_later"}
    assert all(e.passed for e in evaluations.values()), evaluations
    return path


def _check(path, check) -> dg.AssetCheckEvaluation:
    """Run one check alone over the range (the asset is not materialized again)."""
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.checks(check), resources=_resources(path),
                            tags=_range(), raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def _sql(path, statement: str) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute(statement)


def test_prices_checks_pass_on_an_ingest_and_name_a_duplicate_and_an_inconsistent_row(warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    path.write_bytes(warehouse.read_bytes())
    for check in (prices_are_unique_and_consistent, prices_cover_the_listed_instruments):
        assert _check(path, check).passed
    _sql(path, "INSERT INTO raw.prices SELECT * FROM raw.prices WHERE date = '2024-04-01' LIMIT 1")
    _sql(path, "UPDATE raw.prices SET close = high * 2 WHERE date = '2024-04-02' AND instrument = "
               "(SELECT min(instrument) FROM raw.prices WHERE date = '2024-04-02' AND close IS NOT NULL)")
    evaluation = _check(path, prices_are_unique_and_consistent)
    assert not evaluation.passed
    assert evaluation.metadata["duplicate_rows"].value == 1 and evaluation.metadata["ohlc_inconsistent_rows"].value == 1
    assert evaluation.description == ("1 duplicate (date, instrument) rows, 1 rows whose open or close is outside "
                                      "[low, high]")


def test_a_listed_instrument_without_a_row_is_a_warning_with_its_day(warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    path.write_bytes(warehouse.read_bytes())
    _sql(path, "DELETE FROM raw.prices WHERE date = '2024-04-03' AND instrument = "
               "(SELECT min(instrument) FROM raw.prices WHERE date = '2024-04-03')")
    evaluation = _check(path, prices_cover_the_listed_instruments)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["without_a_row"].value == 1
    assert evaluation.metadata["first_missing"].value.startswith("2024-04-03 SYN")
    assert evaluation.description.startswith("1 listed (instrument, day) pairs without a row, the first 2024-04-03 SYN")


def test_an_unadjusted_split_is_a_warning_with_the_stock_its_day_and_both_closes(warehouse, tmp_path):
    """Found by a user: a source without a factor stored a 7:1 split as a -85% day, and no check said a word."""
    path = tmp_path / "w.duckdb"
    path.write_bytes(warehouse.read_bytes())
    assert _check(path, prices_have_no_split_like_moves).passed
    with duckdb.connect(str(path)) as con:
        name, before = con.execute("SELECT instrument, close FROM raw.prices WHERE date = '2024-04-09' AND close IS NOT "
                                   "NULL ORDER BY instrument LIMIT 1").fetchone()
        con.execute("UPDATE raw.prices SET open = open / 7, high = high / 7, low = low / 7, close = close / 7, "
                    "vwap = vwap / 7 WHERE instrument = ? AND date >= '2024-04-10'", [name])
        after = con.execute("SELECT close FROM raw.prices WHERE instrument = ? AND date = '2024-04-10'", [name]).fetchone()[0]
    evaluation = _check(path, prices_have_no_split_like_moves)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["split_like_moves"].value == 1
    assert evaluation.metadata["first_split_like"].value == f"2024-04-10 {name}: {round(before, 4)} then {round(after, 4)}"
    # a run of the days before it (a backfill) looks at the seam with the first stored day after them too
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.checks(prices_have_no_split_like_moves),
                            resources=_resources(path), tags=_range("2024-04-01", "2024-04-09"), raise_on_error=False)
    (seam,) = result.get_asset_check_evaluations()
    assert not seam.passed and seam.metadata["first_split_like"].value.startswith(f"2024-04-10 {name}: ")
    assert seam.description.startswith("1 split-like moves, the first: 2024-04-10")


def test_features_checks_name_a_missing_row_and_an_all_nan_day(warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    path.write_bytes(warehouse.read_bytes())
    rows, nan_day = (c for c in feature_checks if c.check_key.asset_key.path[-1] == "alpha158")
    _sql(path, "DELETE FROM features.alpha158 WHERE date = '2024-04-04' AND instrument = "
               "(SELECT min(instrument) FROM features.alpha158 WHERE date = '2024-04-04')")
    evaluation = _check(path, rows)
    assert not evaluation.passed and evaluation.metadata["first_mismatch"].value == "2024-04-04"
    with duckdb.connect(str(path)) as con:
        columns = [d[0] for d in con.execute("SELECT * FROM features.alpha158 LIMIT 0").description][2:]
        con.execute(f"UPDATE features.alpha158 SET {', '.join(f'{chr(34)}{c}{chr(34)} = NULL' for c in columns)} "
                    "WHERE date = '2024-04-05'")
    evaluation = _check(path, nan_day)
    assert not evaluation.passed and evaluation.metadata["all_nan_days"].value == "2024-04-05"


def test_the_label_check_catches_a_label_known_too_early(warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    path.write_bytes(warehouse.read_bytes())
    check = next(c for c in feature_checks if c.check_key.name == "labels_become_known_two_sessions_later")
    _sql(path, "UPDATE features.label SET known_on = date + INTERVAL 1 DAY WHERE date = '2024-04-08' AND instrument = "
               "(SELECT min(instrument) FROM features.label WHERE date = '2024-04-08')")
    evaluation = _check(path, check)
    assert not evaluation.passed and evaluation.metadata["not_two_sessions_later"].value == 1
    assert "2024-04-08 SYN" in evaluation.metadata["first_offender"].value


def test_a_failing_blocking_check_stops_what_follows(warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    path.write_bytes(warehouse.read_bytes())
    _sql(path, "INSERT INTO raw.prices SELECT * FROM raw.prices WHERE date = '2024-04-01' LIMIT 1")
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.checks(prices_are_unique_and_consistent)
                            | dg.AssetSelection.assets(label_table), resources=_resources(path), tags=_range(),
                            raise_on_error=False)
    assert not result.success
    assert not result.asset_materializations_for_node("features__label")  # never ran on the bad prices
