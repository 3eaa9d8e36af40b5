"""What Dagster's instance storage costs a range run: sqlite (dagster.yaml) vs PostgreSQL (deploy/postgres/dagster.yaml).

The main job's predictions + IC stage for four models over 250 sessions writes one materialization
event per asset and day (2,000) plus the run's step events; that bookkeeping, not the scoring, was
~80 s of the quick start on sqlite. This benchmark runs the same shape of run with assets that do
no work, on both storages side by side in one process (a PostgreSQL server started here on
loopback), and prints seconds, events and milliseconds per event.

    python -m qpipe.bench events [--models 4] [--days 250] [--repeat 2]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

from qpipe.deploy.postgres import LocalPostgres
from qpipe.partitions import trading_days

REPO = Path(__file__).resolve().parents[2]


def range_job(models: int) -> dg.JobDefinition:
    """``models`` x (predictions, IC): partitioned as qpipe's daily assets, one run for a range (single_run)."""

    def report(key: list[str]) -> dg.AssetsDefinition:
        @dg.asset(key=key, partitions_def=trading_days, backfill_policy=dg.BackfillPolicy.single_run())
        def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"dagster/partition_row_count": 300, "IC": 0.05, "days": 250})

        return _asset

    keys = [[group, f"model{i}_{group}"] for i in range(models) for group in ("predictions", "reports")]
    defs = dg.Definitions(assets=[report(key) for key in keys])
    return defs.resolve_implicit_global_asset_job_def()


def timed_run(instance: dg.DagsterInstance, job: dg.JobDefinition, first: str, last: str) -> tuple[float, int]:
    began = time.perf_counter()
    result = job.execute_in_process(instance=instance, tags={"dagster/asset_partition_range_start": first,
                                                             "dagster/asset_partition_range_end": last},
                                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    seconds = time.perf_counter() - began
    assert result.success
    return seconds, len(instance.get_records_for_run(result.run_id, limit=1_000_000).records)


def instance_in(home: Path, config: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True)
    shutil.copy(config, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--days", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=2, help="runs per storage; the best is reported")
    args = parser.parse_args()
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")  # as the main job runs
    keys = trading_days.get_partition_keys()
    first, last = keys[-args.days - 1], keys[-2]
    job = range_job(args.models)
    root = Path(tempfile.mkdtemp(prefix="qpipe-bench-events-"))
    figures = {}
    try:
        with LocalPostgres() as postgres:
            os.environ.update(postgres.env)
            storages = {"sqlite": instance_in(root / "sqlite", REPO / "dagster.yaml"),
                        "postgres": instance_in(root / "postgres", REPO / "deploy" / "postgres" / "dagster.yaml")}
            for _ in range(args.repeat):  # alternate, so both see the same machine
                for name, instance in storages.items():
                    seconds, events = timed_run(instance, job, first, last)
                    figures[name] = min(figures.get(name, (seconds, events)), (seconds, events))
            for instance in storages.values():
                instance.dispose()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"one run: {2 * args.models} assets x {args.days} sessions ({first}..{last}), assets that do no work; "
          f"best of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"{'storage':10} {'seconds':>8} {'events':>7} {'ms/event':>9}")
    for name, (seconds, events) in figures.items():
        print(f"{name:10} {seconds:8.1f} {events:7d} {1000 * seconds / events:9.2f}")
    ratio = figures["sqlite"][0] / figures["postgres"][0]
    print(f"sqlite / postgres: {ratio:.2f}x")


if __name__ == "__main__":
    main()
