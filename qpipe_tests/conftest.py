"""Shared fixtures: real data from ../shared/data, throwaway warehouses, isolated settings."""

import os
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SP500 = SHARED / "data" / "sp500_5yr" / "prices.parquet"


# The modules that take minutes, longest first (about 4, 3.5, 3, 1, 1 and 0.5 minutes on the 2-core machine).
LONGEST_FIRST = ("test_main_job.py", "test_deployment.py", "test_faults.py", "test_qrun.py", "test_cn_market.py",
                 "test_cli_and_webserver.py", "test_celery.py", "test_distributed.py", "test_lake.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first: pytest-xdist (two workers, a module each, in this order) then runs them side by
    side and fills the rest in around them, instead of ending on one long module while the other worker idles."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test writes into the developer's .qpipe or DAGSTER_HOME."""
    monkeypatch.setenv("QPIPE_HOME", str(tmp_path / "qpipe_home"))
    return tmp_path / "qpipe_home"


@contextmanager
def _process_state_kept():
    """Put back what an in-process run changes for the rest of the process: Compute's ``use_threads`` sets torch's and
    numba's thread counts and OMP/MKL_NUM_THREADS, and a deployment points DAGSTER_PG_* at its PostgreSQL. A test or
    module after it on the same xdist worker then computes (and sums: the last bits of a result) as it would alone."""
    import numba
    import torch
    from numba.np.ufunc import parallel

    from qpipe.compute import THREAD_VARIABLES

    def variables() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in THREAD_VARIABLES or k.startswith("DAGSTER_PG_")}

    def numba_threads() -> int:  # without starting numba's pool where nothing has (its default: all of it)
        return numba.get_num_threads() if parallel._is_initialized else numba.config.NUMBA_NUM_THREADS

    torch_threads, numba_before, saved = torch.get_num_threads(), numba_threads(), variables()
    yield
    torch.set_num_threads(torch_threads)
    if numba_threads() != numba_before:
        numba.set_num_threads(numba_before)
    for key in variables().keys() - saved.keys():
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="module")
def module_process_state():
    """(a module's fixtures run in-process materializations too)"""
    with _process_state_kept():
        yield


@pytest.fixture(autouse=True)
def process_state(module_process_state):
    with _process_state_kept():
        yield


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
