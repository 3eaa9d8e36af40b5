"""The main job on the embedded default market: ``python -m qpipe.main``.

Runs ``daily_pipeline`` over the last two years of the synthetic market (recorded in the
instance at $DAGSTER_HOME, so the runs show in ``dagster dev``), then prints what it built.
Prices are loaded from ``LOOKBACK`` trading days earlier, so the first day's features see the
same history as a full-history computation.
"""

import argparse
import time

import dagster as dg
import duckdb

from qpipe.calendar import trading_days
from qpipe.features.store import LOOKBACK
from qpipe.settings import get_settings

FIRST_DAY, LAST_DAY = "2023-01-03", "2024-12-31"


def summary(warehouse: str) -> str:
    with duckdb.connect(warehouse, read_only=True) as con:
        rows = con.execute("""
            SELECT table_schema || '.' || table_name FROM information_schema.tables
            WHERE table_schema IN ('raw', 'features') ORDER BY 1""").fetchall()
        lines = [f"{'table':<20}{'rows':>12}  {'first':>10}  {'last':>10}"]
        for (table,) in rows:
            date_col = "known_on" if table == "features.label" else ("date" if table != "raw.universe" else "start_date")
            if table == "raw.concepts":
                n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                lines.append(f"{table:<20}{n:>12,}")
                continue
            n, lo, hi = con.execute(f"SELECT count(*), min({date_col}), max({date_col}) FROM {table}").fetchone()
            lines.append(f"{table:<20}{n:>12,}  {lo!s:>10}  {hi!s:>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", default=FIRST_DAY)
    parser.add_argument("--end", default=LAST_DAY)
    args = parser.parse_args()

    from qpipe.definitions import defs

    job = defs.resolve_job_def("daily_pipeline")
    instance = dg.DagsterInstance.get()
    prices_from = str(trading_days("2000-01-03", args.start)[-LOOKBACK - 1])
    phases = [
        ("prices and universe", prices_from, ["raw/prices", "raw/universe", "raw/concepts"]),
        ("features and labels", args.start, ["features/alpha158", "features/alpha360", "features/label"]),
    ]
    for name, start, keys in phases:
        began = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey.from_user_string(k) for k in keys],
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": args.end},
            raise_on_error=False,
        )
        print(f"{name} {start}..{args.end}: {'succeeded' if result.success else 'FAILED'} "
              f"in {time.perf_counter() - began:.0f}s (run {result.run_id})", flush=True)
        if not result.success:
            raise SystemExit(1)
    print()
    print(summary(str(get_settings().warehouse)))


if __name__ == "__main__":
    main()
