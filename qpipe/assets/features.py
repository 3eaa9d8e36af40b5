"""features/alpha158, features/alpha360, features/label: Qlib-exact tables computed in one set-based pass."""

import time

import dagster as dg
import duckdb
import pandas as pd

from qpipe.assets.by_partition import rows_by_partition, rows_version
from qpipe.assets.prices import (PRICES, check_range, partition_dates, recording, refuse_before_the_close,
                                 refuse_days_without)
from qpipe.calendar import market_calendar
from qpipe.code_versions import feature_version
from qpipe.data import warehouse as wh
from qpipe.data.validation import first_few
from qpipe.features import store
from qpipe.partitions import trading_days
from qpipe.resources import Compute, Warehouse
from qpipe.settings import get_settings

FEATURE_KEYS = {dg.AssetKey(["features", name]): fs for name, fs in store.FEATURE_SETS.items()}
# the prices sessions before a day its features read (one mapping for the multi-asset: its longest set's)
LOOKBACK = max(fs.lookback for fs in store.FEATURE_SETS.values())
LABEL = dg.AssetKey(["features", "label"])


def warn_of_unstored_sessions(context: dg.AssetExecutionContext, con: duckdb.DuckDBPyConnection,
                              start: pd.Timestamp, end: pd.Timestamp, lookback: int) -> None:
    """Rows are computed over the stored days only: name the sessions they read that have no prices."""
    sessions = market_calendar().trading_days(get_settings().first_partition, end)
    missing = store.sessions_without_prices(con, sessions, start, end, lookback)
    if len(missing):
        context.log.warning(
            f"raw.prices has no row on {len(missing)} of the sessions that the rows of {start.date()}..{end.date()} "
            f"read ({lookback} before the first day included): {first_few(missing)}. The rows are computed without "
            "them (from a shorter history where they precede the first stored day, as Qlib does at the start of its "
            "data; across a gap otherwise): materialize raw/prices for them first if the source has them")


def warn_of_empty_columns(context: dg.AssetExecutionContext, con: duckdb.DuckDBPyConnection, fs: store.FeatureSet,
                          start: pd.Timestamp, end: pd.Timestamp) -> None:
    """Name a user's set's columns that hold no number on any row written (found in review: $vwap of a source
    without one gave a column of NaN, in silence)."""
    if fs.expressions is None:
        return
    counts = con.execute("SELECT " + ", ".join(f'count(*) FILTER (WHERE isfinite("{c}"))' for c in fs.columns)
                         + f" FROM {fs.table} WHERE date BETWEEN ? AND ?", [start.date(), end.date()]).fetchone()
    empty = [c for c, n in zip(fs.columns, counts) if n == 0]
    if empty:
        context.log.warning(f"{fs.name}: {', '.join(f'{c} ({fs.expressions[c]})' for c in empty)} hold no number "
                            f"on any row of {start.date()}..{end.date()}: NaN or infinite everywhere (a field the "
                            "source lacks, as $vwap of one without it, or an expression that is never a number)")


def _spec(key: dg.AssetKey, fs: store.FeatureSet) -> dg.AssetSpec:
    if fs.expressions is None:
        description, shown = (f"Qlib {fs.name.capitalize()}: {len(fs.columns)} raw float32 columns with Qlib's names "
                              "and order (normalization is fitted per checkpoint, not stored)."), {}
    else:
        description = (f"{fs.name}: {len(fs.columns)} float32 columns of your own Qlib expressions (QPIPE_FEATURE_SETS), "
                       f"each day's from the {fs.lookback} sessions before it and the day itself.")
        shown = {"expressions": dg.MetadataValue.md("| column | expression |\n|---|---|\n" + "\n".join(
            f"| {column} | `{text}` |" for column, text in fs.expressions.items()))}
    return dg.AssetSpec(key, description=description, kinds={"duckdb", "numpy"},
                        code_version=feature_version(fs.name, fs.expressions),
                        deps=[dg.AssetDep(PRICES, partition_mapping=dg.TimeWindowPartitionMapping(
                            start_offset=-LOOKBACK))],
                        metadata={"dagster/table_name": fs.table, **shown})


@dg.multi_asset(
    specs=[_spec(key, fs) for key, fs in FEATURE_KEYS.items()],
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
    operators = store.operators(compute.feature_device)
    # found in review: a day without prices (today's, before the close) went in as materialized with 0 rows
    refuse_before_the_close(end, "a session's features are computed from its prices, in after the close")
    with warehouse.get_connection() as con:
        refuse_days_without(con, wh.PRICES, "date", start, end, "raw/prices")
        warn_of_unstored_sessions(context, con, start, end, max(fs.lookback for fs in selected))
        try:  # a user's set whose definition changed since its table was written: named, nothing written
            written = store.write_features(con, selected, start, end, block_cells=compute.block_cells,
                                           operators=operators)
        except store.ChangedSetError as error:
            raise dg.Failure(str(error)) from None
        for fs in selected:
            warn_of_empty_columns(context, con, fs, start, end)
        digests = {fs.name: wh.day_versions(con, fs.table, start, end) for fs in selected}
        versions = {fs.name: rows_version(context, dg.AssetKey(["features", fs.name]), digests[fs.name])
                    for fs in selected}
    seconds = time.perf_counter() - began
    counts = ", ".join(f"{name} {rows:,} rows" for name, rows in written.items())
    where = f"{compute.threads} threads" if operators is store.ops else f"on {operators.device}"
    context.log.info(f"{counts} for {start.date()}..{end.date()} in {seconds:.1f}s ({where})"
                     + recording(context, len(selected)))
    for fs in selected:
        key = dg.AssetKey(["features", fs.name])
        rows_by_partition(context, digests[fs.name], key)
        yield dg.MaterializeResult(asset_key=key, data_version=versions[fs.name], metadata={
            "rows_written": written[fs.name], "columns": len(fs.columns), "seconds": round(seconds, 3)})


@dg.asset(
    key=LABEL,
    description="LABEL0 = Ref($close,-2)/Ref($close,-1)-1; partition D holds the labels that become known "
                "at D's close (those of the day two trading days earlier).",
    partitions_def=trading_days,
    deps=[dg.AssetDep(PRICES, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-store.LABEL_HORIZON))],
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="features",
    kinds={"duckdb", "numpy"},
    metadata={"dagster/table_name": store.LABEL_TABLE},
    code_version=feature_version("label"),
)
def label_table(context: dg.AssetExecutionContext, warehouse: Warehouse, compute: Compute) -> dg.MaterializeResult:
    start, end = partition_dates(context)
    refuse_before_the_close(end, "the labels known on a session are made from its close")
    with warehouse.get_connection() as con:
        refuse_days_without(con, wh.PRICES, "date", start, end, "raw/prices")
        # partition D holds the labels of D - 2 (its row), from the closes of D - 1 and D
        warn_of_unstored_sessions(context, con, start, end, store.LABEL_HORIZON)
        rows = store.write_labels(con, start, end, block_cells=compute.block_cells)
        digests = wh.day_versions(con, store.LABEL_TABLE, start, end, date_column="known_on")
        version = rows_version(context, LABEL, digests)
    context.log.info(f"{store.LABEL_TABLE}: {rows} labels became known on {start.date()}..{end.date()}"
                     + recording(context))
    rows_by_partition(context, digests)
    return dg.MaterializeResult(data_version=version, metadata={"rows_written": rows})


def _feature_checks(key: dg.AssetKey, fs: "store.FeatureSet") -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=key, name="a_row_for_every_price_row", blocking=True, pool="duckdb",
                    description=f"{fs.table} has one row per raw.prices row of each day.")
    def rows_match_prices(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as con:
            days, mismatched, example = con.execute(f"""
                WITH p AS (SELECT date, count(*) AS n FROM raw.prices WHERE date BETWEEN $1 AND $2 GROUP BY 1),
                     f AS (SELECT date, count(*) AS n, count(DISTINCT instrument) AS k FROM {fs.table}
                           WHERE date BETWEEN $1 AND $2 GROUP BY 1)
                SELECT count(*), count(*) FILTER (WHERE f.n IS DISTINCT FROM p.n OR f.k IS DISTINCT FROM p.n),
                       min(CASE WHEN f.n IS DISTINCT FROM p.n OR f.k IS DISTINCT FROM p.n
                           THEN strftime(coalesce(p.date, f.date), '%Y-%m-%d') END)
                FROM p FULL JOIN f ON p.date = f.date""", check_range(context)).fetchall()[0]
        why = ("no day with prices or rows: nothing to compare" if days == 0 else
               f"{mismatched} days whose rows are not one per price row, the first {example}" if mismatched else None)
        return dg.AssetCheckResult(passed=days > 0 and mismatched == 0, description=why,
                                   metadata={"days": days, "days_mismatched": mismatched, "first_mismatch": example or ""})

    nan_share = " + ".join(f'(CASE WHEN isnan("{c}") OR "{c}" IS NULL THEN 1 ELSE 0 END)' for c in fs.columns)

    @dg.asset_check(asset=key, name="no_all_nan_day", blocking=True, pool="duckdb",
                    description=f"No day whose {fs.name} values are all NaN (a broken input day), and each day's "
                                "NaN share beside the 60 sessions before (a warning in the metadata).")
    def no_all_nan_day(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        first, last = check_range(context)
        with warehouse.get_connection() as con:
            per_day = con.execute(f"""
                SELECT date, avg(({nan_share}) / {len(fs.columns)}) AS share FROM {fs.table}
                WHERE date BETWEEN (SELECT coalesce(min(date), $1) FROM (SELECT DISTINCT date FROM {fs.table}
                                    WHERE date < $1 ORDER BY date DESC LIMIT 60)) AND $2
                GROUP BY 1 ORDER BY 1""", [first, last]).df()
        inside = per_day[per_day["date"].dt.date >= first]
        before = per_day[per_day["date"].dt.date < first]["share"]
        all_nan = inside[inside["share"] >= 1.0]
        why = ("no day of rows" if inside.empty else f"{len(all_nan)} days whose values are all NaN: "
               f"{', '.join(str(d.date()) for d in all_nan['date'][:10])}" if len(all_nan) else None)
        return dg.AssetCheckResult(passed=len(inside) > 0 and all_nan.empty, description=why, metadata={
            "days": len(inside),
            "all_nan_days": ", ".join(str(d.date()) for d in all_nan["date"][:10]),
            "nan_share_max": float(inside["share"].max()) if len(inside) else float("nan"),
            "nan_share_before": float(before.mean()) if len(before) else float("nan"),
        })

    return [rows_match_prices, no_all_nan_day]


@dg.asset_check(asset=dg.AssetKey(["features", "label"]), blocking=True, pool="duckdb",
                description="Known-on discipline: each label becomes known exactly two sessions after its day "
                            "(so no checkpoint can read a label before it is known).")
def labels_become_known_two_sessions_later(context: dg.AssetCheckExecutionContext,
                                           warehouse: Warehouse) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        rows, early, example = con.execute(f"""
            WITH days AS (SELECT date, row_number() OVER (ORDER BY date) AS i FROM (SELECT DISTINCT date FROM raw.prices))
            SELECT count(*), count(*) FILTER (WHERE k.i - d.i <> {store.LABEL_HORIZON}),
                   min(CASE WHEN k.i - d.i <> {store.LABEL_HORIZON} THEN strftime(l.date, '%Y-%m-%d') || ' ' ||
                       l.instrument || ' known on ' || strftime(l.known_on, '%Y-%m-%d') END)
            FROM {store.LABEL_TABLE} l JOIN days d ON d.date = l.date JOIN days k ON k.date = l.known_on
            WHERE l.known_on BETWEEN ? AND ?""", check_range(context)).fetchall()[0]
    return dg.AssetCheckResult(passed=early == 0, metadata={"labels": rows, "not_two_sessions_later": early,
                                                            "first_offender": example or ""})


feature_checks = [check for key, fs in FEATURE_KEYS.items() for check in _feature_checks(key, fs)] + [
    labels_become_known_two_sessions_later]
