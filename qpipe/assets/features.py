"""features/alpha158, features/alpha360, features/label: Qlib-exact tables computed in one set-based pass."""

import time

import dagster as dg

from qpipe.assets.prices import PRICES, partition_dates, recording
from qpipe.features import store
from qpipe.partitions import trading_days
from qpipe.resources import Compute, Warehouse

FEATURE_KEYS = {dg.AssetKey(["features", name]): fs for name, fs in store.FEATURE_SETS.items()}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(key, description=f"Qlib {fs.name.capitalize()}: {len(fs.columns)} raw float32 columns with "
                                      "Qlib's names and order (normalization is fitted per checkpoint, not stored).",
                     deps=[dg.AssetDep(PRICES, partition_mapping=dg.TimeWindowPartitionMapping(
                         start_offset=-store.LOOKBACK))],
                     kinds={"duckdb", "numpy"}, metadata={"dagster/table_name": fs.table})
        for key, fs in FEATURE_KEYS.items()
    ],
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="features",
    can_subset=True,
)
def feature_tables(context: dg.AssetExecutionContext, warehouse: Warehouse, compute: Compute):
    start, end = partition_dates(context)
    selected = [FEATURE_KEYS[key] for key in FEATURE_KEYS if key in context.selected_asset_keys]
    began = time.perf_counter()
    with warehouse.get_connection() as con:
        written = store.write_features(con, selected, start, end)
    seconds = time.perf_counter() - began
    counts = ", ".join(f"{name} {rows:,} rows" for name, rows in written.items())
    context.log.info(f"{counts} for {start.date()}..{end.date()} in {seconds:.1f}s ({compute.threads} threads)"
                     + recording(context, len(selected)))
    for fs in selected:
        yield dg.MaterializeResult(asset_key=["features", fs.name], metadata={
            "dagster/partition_row_count": written[fs.name],
            "columns": len(fs.columns),
            "seconds": round(seconds, 3),
        })


@dg.asset(
    key=["features", "label"],
    description="LABEL0 = Ref($close,-2)/Ref($close,-1)-1; partition D holds the labels that become known "
                "at D's close (those of the day two trading days earlier).",
    partitions_def=trading_days,
    deps=[dg.AssetDep(PRICES, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-store.LABEL_HORIZON))],
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="features",
    kinds={"duckdb", "numpy"},
    metadata={"dagster/table_name": store.LABEL_TABLE},
)
def label_table(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    start, end = partition_dates(context)
    with warehouse.get_connection() as con:
        rows = store.write_labels(con, start, end)
    context.log.info(f"{store.LABEL_TABLE}: {rows} labels became known on {start.date()}..{end.date()}"
                     + recording(context))
    return dg.MaterializeResult(metadata={"dagster/partition_row_count": rows})
