"""Alpha158 + Alpha360 + label on a synthetic market: compute time, DuckDB write time, peak RSS.

Qlib 0.9.7 on the 2-core reference machine, 300 instruments x 2500 days (raw features only):
Alpha158 21.0 s, Alpha360 21.7 s, peak 9 GB.
"""

import argparse
import tempfile
from pathlib import Path

import duckdb
import numpy as np

from qpipe.bench import peak_rss_gb, synthetic_market, timed
from qpipe.data import warehouse as wh
from qpipe.features import store

QLIB_SECONDS = {"alpha158": 21.0, "alpha360": 21.7}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instruments", type=int, default=300)
    parser.add_argument("--days", type=int, default=2500)
    parser.add_argument("--start", default="2015-01-02")
    parser.add_argument("--memory-limit", default=wh.CONNECTION_CONFIG["memory_limit"],
                        help="DuckDB memory_limit (default: the Warehouse resource's)")
    args = parser.parse_args()

    market = synthetic_market(args.instruments, args.days, args.start)
    first, last = market.prices["date"].min(), market.prices["date"].max()
    print(f"synthetic market: {args.instruments} instruments x {args.days} days, {len(market.prices):,} price rows")
    t: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def warehouse(name: str) -> duckdb.DuckDBPyConnection:
            con = duckdb.connect(str(Path(tmp) / f"{name}.duckdb"), config={"memory_limit": args.memory_limit})
            wh.write_prices(con, market.prices, first, last, calendar="XNYS")
            return con

        print("as the assets do it (one transaction per asset, fresh warehouse):")
        con = warehouse("assets")
        with timed("numba kernels: compile, or load the cache", t):  # once per install: cached in __pycache__
            for _ in store.feature_blocks(con, list(store.FEATURE_SETS.values()), last, last):
                pass
            list(store.label_blocks(con, last, last))
        with timed("alpha158 + alpha360 + label", t):
            store.write_features(con, list(store.FEATURE_SETS.values()), first, last)
            store.write_labels(con, first, last)
        day = np.datetime64(last, "D")
        with timed("daily increment (3 tables, 1 day)", t):
            store.write_features(con, list(store.FEATURE_SETS.values()), day, day)
            store.write_labels(con, day, day)
        con.close()

        print("where the time goes (compute, then write, per table):")
        con = warehouse("breakdown")
        con.execute("SET force_compression = 'uncompressed'")  # as store.write_features does
        for name, fs in store.FEATURE_SETS.items():
            with timed(f"compute {name}", t):
                blocks = [table for _, table in store.feature_blocks(con, [fs], first, last)]
            with timed(f"write {name}", t):
                wh.ensure_table(con, fs.table, fs.ddl)
                with wh.transaction(con):
                    for table in blocks:
                        wh.insert(con, fs.table, table)
            del blocks
        with timed("compute label", t):
            labels = list(store.label_blocks(con, first, last))
        with timed("write label", t):
            wh.ensure_table(con, store.LABEL_TABLE, store.LABEL_DDL)
            for table in labels:
                wh.insert(con, store.LABEL_TABLE, table)
        con.close()

    compute = sum(v for k, v in t.items() if k.startswith("compute"))
    total = t["alpha158 + alpha360 + label"]
    rows = len(market.prices)
    qlib = sum(QLIB_SECONDS.values())
    raw_sets = t["compute alpha158"] + t["compute alpha360"]
    print(f"\ncompute, three tables:     {compute:6.2f} s  ({rows / compute:,.0f} rows/s)")
    print(f"as the assets do it:       {total:6.2f} s  (target 15 s)")
    print(f"daily increment:           {t['daily increment (3 tables, 1 day)']:6.2f} s  (target 1 s)")
    print(f"kernel compile, first run after install only: {t['numba kernels: compile, or load the cache']:.2f} s")
    print(f"Alpha158 + Alpha360 vs Qlib 0.9.7 ({qlib:.1f} s): {qlib / raw_sets:.1f}x faster")
    print(f"peak RSS:                  {peak_rss_gb():6.2f} GB  (Qlib: 9 GB)")


if __name__ == "__main__":
    main()
