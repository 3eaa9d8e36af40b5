"""Alpha158 + Alpha360 + label on a synthetic market: compute time, DuckDB write time, peak RSS; with
``--qlib-python`` (an interpreter with pyqlib 0.9.7) Qlib's own Alpha158/Alpha360 on the same market, side by side.

    python -m qpipe.bench features [--instruments 300] [--days 2500] [--qlib-python /tmp/qlibvenv/bin/python] [--lake]

``--lake`` writes the same tables to a DuckLake as well (qpipe.data.lake; a local catalog file and Parquet files
beside it), timed next to the DuckDB file.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import duckdb
import numpy as np

from qpipe.bench import peak_rss_gb, synthetic_market, timed
from qpipe.data import lake
from qpipe.data import warehouse as wh
from qpipe.data.qlib_provider import write_qlib_provider
from qpipe.features import store
from qpipe.settings import BLOCK_CELLS

HERE = Path(__file__).resolve().parent


def qlib_side(python: str, prices, folder: Path) -> dict:
    """Qlib's D.features of Alpha158 and Alpha360 on ``prices``, in ``python`` (qlib_features.py)."""
    provider = write_qlib_provider(prices, folder / "provider")
    out = subprocess.run([python, str(HERE / "qlib_features.py"), str(provider)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"Qlib's side failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=300)
    parser.add_argument("--days", type=int, default=2500)
    parser.add_argument("--start", default="2015-01-02")
    parser.add_argument("--block-cells", type=int, default=BLOCK_CELLS, help="QPIPE_BLOCK_CELLS")
    parser.add_argument("--memory-limit", default=wh.CONNECTION_CONFIG["memory_limit"],
                        help="DuckDB memory_limit (default: the Warehouse resource's)")
    parser.add_argument("--qlib-python", default=None, help="an interpreter with pyqlib 0.9.7, for Qlib's side")
    parser.add_argument("--lake", action="store_true", help="write to a DuckLake too, side by side with the file")
    args = parser.parse_args()

    market = synthetic_market(args.instruments, args.days, args.start)
    first, last = market.prices["date"].min(), market.prices["date"].max()
    print(f"synthetic market: {args.instruments} instruments x {args.days} days, {len(market.prices):,} price rows")
    t: dict[str, float] = {}
    sets = list(store.FEATURE_SETS.values())
    with tempfile.TemporaryDirectory() as tmp:
        def warehouse(name: str, on_lake: bool = False) -> duckdb.DuckDBPyConnection:
            folder, config = Path(tmp), {"memory_limit": args.memory_limit}
            con = duckdb.connect(":memory:" if on_lake else str(folder / f"{name}.duckdb"), config=config)
            if on_lake:
                lake.attach(con, str(folder / f"{name}.ducklake"), str(folder / f"{name}-data"))
            wh.write_prices(con, market.prices, first, last, calendar="XNYS")
            return con

        print("as the assets do it (one transaction per asset, fresh warehouse):")
        con = warehouse("assets")
        with timed("numba kernels: compile, or load the cache", t):  # once per install: cached in __pycache__
            for _ in store.feature_blocks(con, sets, last, last):
                pass
            list(store.label_blocks(con, last, last))
        with timed("alpha158 + alpha360 + label", t):
            store.write_features(con, sets, first, last, block_cells=args.block_cells)
            store.write_labels(con, first, last, block_cells=args.block_cells)
        materialized_rss = peak_rss_gb()
        day = np.datetime64(last, "D")
        with timed("daily increment (3 tables, 1 day)", t):
            store.write_features(con, sets, day, day)
            store.write_labels(con, day, day)

        if args.lake:
            print("the same on a DuckLake (a local catalog file, Parquet files):")
            with warehouse("lake", on_lake=True) as on_lake:
                with timed("lake: alpha158 + alpha360 + label", t):
                    store.write_features(on_lake, sets, first, last, block_cells=args.block_cells)
                    store.write_labels(on_lake, first, last, block_cells=args.block_cells)
                with timed("lake: daily increment (3 tables, 1 day)", t):
                    store.write_features(on_lake, sets, day, day)
                    store.write_labels(on_lake, day, day)

        print("the compute alone (no writes):")
        for name, fs in store.FEATURE_SETS.items():
            with timed(f"compute {name}", t):
                for _ in store.feature_blocks(con, [fs], first, last, block_cells=args.block_cells):
                    pass
        with timed("compute label", t):
            for _ in store.label_blocks(con, first, last, block_cells=args.block_cells):
                pass
        con.close()
        qlib = qlib_side(args.qlib_python, market.prices, Path(tmp)) if args.qlib_python else None

    rows = len(market.prices)
    compute = sum(v for k, v in t.items() if k.startswith("compute"))
    total = t["alpha158 + alpha360 + label"]
    print(f"\ncompute, three tables:       {compute:6.2f} s  ({rows / compute:,.0f} rows/s)")
    print(f"with the writes (assets):    {total:6.2f} s  (target 5 s), peak RSS {materialized_rss:.2f} GB")
    print(f"daily increment:             {t['daily increment (3 tables, 1 day)']:6.2f} s  (target 1 s)")
    if args.lake:
        print(f"on a DuckLake:               {t['lake: alpha158 + alpha360 + label']:6.2f} s, daily increment "
              f"{t['lake: daily increment (3 tables, 1 day)']:.2f} s")
    print(f"kernel compile, first run after install only: {t['numba kernels: compile, or load the cache']:.2f} s")
    if qlib:
        print(f"Qlib 0.9.7, D.features on all cores, same market (qlib_features.py): alpha158 {qlib['alpha158']:.2f} s, "
              f"alpha360 {qlib['alpha360']:.2f} s, peak RSS {qlib['peak_rss_gb']:.2f} GB (main process)")
        for name in store.FEATURE_SETS:
            print(f"  {name}: qpipe compute {t[f'compute {name}']:.2f} s vs Qlib {qlib[name]:.2f} s: "
                  f"{qlib[name] / t[f'compute {name}']:.1f}x faster")
        both = qlib["alpha158"] + qlib["alpha360"]
        print(f"  both sets: qpipe with its DuckDB writes and the label {total:.2f} s vs Qlib in memory {both:.2f} s: "
              f"{both / total:.1f}x faster")


if __name__ == "__main__":
    main()
