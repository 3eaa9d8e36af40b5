"""All of ../shared/data/sp500_5yr through the CSV source into a DuckDB warehouse.

Writes the 606,505 rows as CSV twice (one file; one file per symbol, as Yahoo/Kaggle dumps come),
then times source -> validation -> canonical frame -> DuckDB, each in one transaction.
"""

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

from qpipe.bench import peak_rss_gb
from qpipe.data import warehouse as wh
from qpipe.data.tabular import TabularSource

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sp500_5yr" / "prices.parquet"


def _ingest(source: Path, warehouse: Path) -> tuple[int, float, float]:
    began = time.perf_counter()
    prices = TabularSource(str(source)).prices()
    loaded = time.perf_counter()
    with duckdb.connect(str(warehouse)) as con:
        wh.write_prices(con, prices, prices["date"].min(), prices["date"].max(), calendar="XNYS")
    return len(prices), loaded - began, time.perf_counter() - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    raw = pd.read_parquet(args.data).drop(columns=["factor"])  # the CSV carries adj_close, as Yahoo's does
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw.to_csv(tmp / "sp500.csv", index=False)
        (tmp / "by_symbol").mkdir()
        for symbol, rows in raw.groupby("symbol"):
            rows.to_csv(tmp / "by_symbol" / f"{symbol}.csv", index=False)
        for name, source in (("one CSV file", tmp / "sp500.csv"), ("489 per-symbol CSV files", tmp / "by_symbol")):
            rows, read, write = _ingest(source, tmp / f"{source.stem}.duckdb")
            print(f"{name:<26} {rows:,} rows: read+validate {read:5.2f} s, DuckDB write {write:5.2f} s, "
                  f"total {read + write:5.2f} s ({rows / (read + write):,.0f} rows/s; target < 5 s)")
    print(f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
