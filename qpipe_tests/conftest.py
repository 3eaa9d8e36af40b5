"""Shared fixtures: real data from ../shared/data, throwaway warehouses, isolated settings."""

from pathlib import Path

import duckdb
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SP500 = SHARED / "data" / "sp500_5yr" / "prices.parquet"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow end-to-end tests first: pytest-xdist (two workers, a module each) then starts the longest modules at
    once and fills the rest in around them, instead of ending on one long module while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test writes into the developer's .qpipe or DAGSTER_HOME."""
    monkeypatch.setenv("QPIPE_HOME", str(tmp_path / "qpipe_home"))
    return tmp_path / "qpipe_home"


@pytest.fixture(scope="session")
def sp500() -> pd.DataFrame:
    return pd.read_parquet(SP500)


@pytest.fixture
def warehouse_path(tmp_path) -> Path:
    return tmp_path / "warehouse.duckdb"


def table_rows(path: Path, table: str) -> list[tuple]:
    """Every row of a warehouse table, sorted: a full snapshot to compare before/after a failure."""
    with duckdb.connect(str(path), read_only=True) as con:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
