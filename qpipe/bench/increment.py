"""The daily increment: what a one-day prices run reads from each kind of source, against the whole history.

A Qlib provider directory of the synthetic market (300 instruments x 2,500 sessions by default)
is written to a temporary folder; then, side by side in this process, the whole history and one
day are read through qpipe's Qlib source (bytes read from /proc/self/io, seconds), and the
``raw/prices`` asset is materialized for that day in a fresh Dagster instance (its step time).
The S&P 500 file of ../shared/data is read whole and for one day as Parquet and as CSV.

    python -m qpipe.bench increment
    python -m qpipe.bench increment --instruments 1000 --days 2500
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qpipe.bench import synthetic_market
from qpipe.data.anchoring import ANCHOR_SESSIONS

REPO = Path(__file__).resolve().parents[2]
SP500 = REPO.parent / "shared" / "data" / "sp500_5yr" / "prices.parquet"

# Runs with the provider configured as the source (settings are read when qpipe's definitions load).
ASSET_RUN = """
import json, sys, time
import dagster as dg
from qpipe.assets.prices import raw_prices
from qpipe.resources import build_resources
day = sys.argv[1]
resources = build_resources()
began = time.perf_counter()
result = dg.materialize([raw_prices], partition_key=day,
                        resources={k: resources[k] for k in ("warehouse", "price_source", "compute")})
wall = time.perf_counter() - began
step = result.get_step_success_events()[0].event_specific_data.duration_ms / 1000
print(json.dumps({"wall": wall, "step": step,
                  "rows": result.asset_materializations_for_node("raw__prices")[0].metadata["dagster/partition_row_count"].value}))
"""


def bytes_read() -> int:
    return int(next(line for line in open("/proc/self/io") if line.startswith("rchar")).split()[1])


def measure(label: str, read) -> tuple[float, int, int]:
    before, began = bytes_read(), time.perf_counter()
    rows = read()
    seconds, read_bytes = time.perf_counter() - began, bytes_read() - before
    print(f"  {label:<44} {seconds:7.3f} s  {read_bytes / 1e6:9.3f} MB read  {len(rows):>9,} rows", flush=True)
    return seconds, read_bytes, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=300)
    parser.add_argument("--days", type=int, default=2500)
    args = parser.parse_args()

    from qpipe.data.qlib_provider import QlibSource, write_qlib_provider
    from qpipe.data.tabular import TabularSource

    with tempfile.TemporaryDirectory(prefix="qpipe-increment-") as tmp:
        market = synthetic_market(args.instruments, args.days)
        root = write_qlib_provider(market.prices, Path(tmp) / "provider", market.universe)
        size = sum(p.stat().st_size for p in (root / "features").rglob("*.bin"))
        day = str(np.sort(market.prices["date"].unique())[-1])[:10]
        print(f"Qlib provider: {args.instruments} instruments x {args.days} sessions, {size / 1e6:.1f} MB of bins; "
              f"the increment is {day}", flush=True)
        source = QlibSource(str(root), ingest="all")
        full_s, full_b, _ = measure("whole history (what every run read before)", source.prices)
        day_s, day_b, _ = measure(f"one day ({day})", lambda: source.prices(day, day))
        print(f"  one day reads {day_b / size:.2%} of the bins' bytes ({full_b / day_b:.0f}x less than the whole history), "
              f"{full_s / day_s:.0f}x faster", flush=True)
        first = str(np.sort(market.prices["date"].unique())[-1 - ANCHOR_SESSIONS])[:10]
        run_s, run_b, _ = measure(f"the day and the {ANCHOR_SESSIONS} sessions before it, which raw/prices reads (to "
                                  "anchor a re-based source on)", lambda: source.prices(first, day))
        print(f"  that read takes {run_b / size:.2%} of the bins' bytes ({full_b / run_b:.0f}x less than the whole "
              f"history), {full_s / run_s:.0f}x faster", flush=True)

        env = {**os.environ, "QPIPE_SOURCE": "qlib", "QPIPE_SOURCE_PATH": str(root), "QPIPE_QLIB_INGEST": "all",
               "QPIPE_PARTITIONS_START": str(np.sort(market.prices["date"].unique())[0])[:10],
               "QPIPE_HOME": str(Path(tmp) / "home"), "DAGSTER_HOME": str(Path(tmp) / "dagster_home")}
        (Path(tmp) / "dagster_home").mkdir()
        done = subprocess.run([sys.executable, "-c", ASSET_RUN, day], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        run = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  raw/prices for {day} as a Dagster run: step {run['step']:.2f} s ({run['rows']} rows), "
              f"whole in-process run {run['wall']:.2f} s", flush=True)

        if SP500.is_file():
            import pandas as pd

            frame = pd.read_parquet(SP500)
            last = str(frame["date"].max())[:10]
            frame.to_csv(Path(tmp) / "sp500.csv", index=False)
            print(f"S&P 500 5 years ({len(frame):,} rows), one day = {last}:", flush=True)
            for label, path in (("Parquet", SP500), ("CSV", Path(tmp) / "sp500.csv")):
                table = TabularSource(str(path))
                whole = measure(f"{label}: whole history", table.prices)[0]
                one = measure(f"{label}: one day", lambda: table.prices(last, last))[0]
                print(f"  {label}: one day {whole / one:.1f}x faster than the whole file", flush=True)


if __name__ == "__main__":
    main()
