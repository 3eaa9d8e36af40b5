"""The main job on the embedded default market: ``python -m qpipe.main``.

Runs ``daily_pipeline`` over the synthetic market's whole history as one Dagster run (recorded
in the instance at $DAGSTER_HOME, so it shows in ``dagster dev``), then prints what it built.
"""

import argparse
import time

import dagster as dg
import duckdb

from qpipe.settings import get_settings

SYNTHETIC_FIRST_DAY, SYNTHETIC_LAST_DAY = "2015-01-02", "2024-12-31"


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
    parser.add_argument("--start", default=SYNTHETIC_FIRST_DAY)
    parser.add_argument("--end", default=SYNTHETIC_LAST_DAY)
    args = parser.parse_args()

    from qpipe.definitions import defs

    began = time.perf_counter()
    job = defs.resolve_job_def("daily_pipeline")
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        tags={"dagster/asset_partition_range_start": args.start, "dagster/asset_partition_range_end": args.end},
    )
    print(f"\ndaily_pipeline {args.start}..{args.end}: {'succeeded' if result.success else 'FAILED'} "
          f"in {time.perf_counter() - began:.0f}s (run {result.run_id})\n")
    print(summary(str(get_settings().warehouse)))


if __name__ == "__main__":
    main()
