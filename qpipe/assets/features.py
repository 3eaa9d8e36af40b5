"""features/alpha158, features/alpha360, features/label: Qlib-exact tables computed in one set-based pass."""

import time

import dagster as dg

from qpipe.assets.prices import PRICES, partition_dates
from qpipe.features import store
from qpipe.partitions import trading_days
from qpipe.resources import Warehouse


def _feature_asset(feature_set: store.FeatureSet) -> dg.AssetsDefinition:
    @dg.asset(
        key=["features", feature_set.name],
        description=f"Qlib {feature_set.name.capitalize()}: {len(feature_set.columns)} raw float32 columns "
                    "with Qlib's names and order (no normalization stored).",
        partitions_def=trading_days,
        deps=[dg.AssetDep(PRICES, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-store.LOOKBACK))],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="duckdb",
        group_name="features",
        kinds={"duckdb", "numpy"},
        metadata={"dagster/table_name": feature_set.table},
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        began = time.perf_counter()
        with warehouse.get_connection() as con:
            rows = store.write_features(con, feature_set, start, end)
        seconds = time.perf_counter() - began
        context.log.info(f"{feature_set.table}: {rows} rows for {start.date()}..{end.date()} in {seconds:.1f}s")
        return dg.MaterializeResult(metadata={
            "dagster/partition_row_count": rows,
            "columns": len(feature_set.columns),
            "seconds": round(seconds, 3),
        })

    return _asset


feature_assets = [_feature_asset(fs) for fs in store.FEATURE_SETS.values()]


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
def label_asset(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    start, end = partition_dates(context)
    with warehouse.get_connection() as con:
        rows = store.write_labels(con, start, end)
    context.log.info(f"{store.LABEL_TABLE}: {rows} labels became known on {start.date()}..{end.date()}")
    return dg.MaterializeResult(metadata={"dagster/partition_row_count": rows})
