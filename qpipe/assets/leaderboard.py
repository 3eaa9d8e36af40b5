"""reports/leaderboard: every model's out-of-sample IC, ICIR, Rank IC and Rank ICIR to date, side by side.

Unpartitioned (one table for all days and models), so it sits outside the partitioned daily job:
``refresh_leaderboard`` requests it after each successful run that stored daily IC (the daily job, a
backfill from the UI, a range launched from the command line), but for the runs of the main job and of
``qpipe qrun``, whose last run ranks the models itself (a workflow's, on its own warehouse).
"""

import dagster as dg

from qpipe.assets.charts import inline
from qpipe.assets.models import MODELS, backtest_key, ic_key
from qpipe.code_versions import leaderboard_version
from qpipe.resources import CheckpointStore, Warehouse
from qpipe.settings import get_settings

LEADERBOARD_TABLE = "reports.leaderboard"


@dg.asset(
    key=["reports", "leaderboard"],
    description="Qlib's benchmark table: IC, ICIR, Rank IC, Rank ICIR per model over all scored days (SigAnaRecord) "
                "and, from its backtest, annualized excess return, IR and max drawdown with cost (PortAnaRecord); "
                "best Rank IC first; DuckDB reports.leaderboard, a markdown table, a cumulative Rank IC chart and an HTML "
                "tear sheet linking each model's.",
    deps=[dg.AssetDep(key) for name in MODELS for key in (ic_key(name), backtest_key(name))],
    group_name="summary",
    kinds={"duckdb", "matplotlib"},
    metadata={"dagster/table_name": LEADERBOARD_TABLE},
    code_version=leaderboard_version(),
)
def leaderboard(context: dg.AssetExecutionContext, warehouse: Warehouse,
                checkpoints: CheckpointStore) -> dg.MaterializeResult:
    from qpipe.data import warehouse as wh
    from qpipe.evaluation import backtest_store, report, tearsheet

    with warehouse.get_connection() as con:
        wh.ensure_table(con, report.DAILY_IC, report.DAILY_IC_DDL)
        daily = report.read_daily_ic(con)
        if daily.empty:
            raise dg.Failure("no daily IC stored yet: materialize reports/<model>_ic for some days first")
        backtests = backtest_store.read_daily(con)
        board = report.leaderboard(daily).merge(backtest_store.portfolio_columns(backtests), on="model", how="left")
        board.insert(1, "dataset", [datasets(con, checkpoints, model) for model in board["model"]])
        con.execute(f"CREATE SCHEMA IF NOT EXISTS reports; CREATE OR REPLACE TABLE {LEADERBOARD_TABLE} AS SELECT * FROM board")
    folder = get_settings().home / "reports"
    chart = report.cumulative_ic_chart(daily, "all models", folder / "leaderboard.png", measures=("Rank IC",))
    sheet = tearsheet.write_leaderboard_tearsheet(board, backtests, chart, folder)
    context.log.info("\n" + board.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return dg.MaterializeResult(metadata={
        "leaderboard": dg.MetadataValue.md(board.to_markdown(index=False, floatfmt=".4f")),
        **{f"{model} Rank IC": float(value) for model, value in board.set_index("model")["Rank IC"].items()},
        "models": len(board),
        "cumulative Rank IC chart": dg.MetadataValue.path(str(chart)),
        "cumulative Rank IC": inline(chart, "cumulative Rank IC of every model"),
        "tear sheet": dg.MetadataValue.path(str(sheet)),
    })


def datasets(con, checkpoints: CheckpointStore, model: str) -> str:
    """The feature sets of the checkpoints that made ``model``'s stored scores (Qlib's table: Alpha158, Alpha360)."""
    import json

    from qpipe.data import warehouse as wh
    from qpipe.models.config import FEATURE_SETS as HANDLERS

    if not wh.has_table(con, wh.PREDICTIONS):
        return ""
    partitions = [p for (p,) in con.execute(f"SELECT DISTINCT checkpoint_partition FROM {wh.PREDICTIONS} "
                                            "WHERE model = ?", [model]).fetchall()]
    names = set()
    for partition in partitions:
        sidecar = checkpoints.path_for(model, partition).with_suffix(".json")
        if sidecar.is_file():
            names.add(json.loads(sidecar.read_text())["feature_set"])
    handlers = {name: handler for handler, name in HANDLERS.items()}  # as Qlib's table writes them: Alpha360
    return ", ".join(handlers.get(name, name) for name in sorted(names))


leaderboard_job = dg.define_asset_job("leaderboard_job", selection=[leaderboard.key],
                                      description="Refresh reports/leaderboard.")


IC_KEYS = frozenset(ic_key(name) for name in MODELS)
BACKTEST_KEYS = frozenset(backtest_key(name) for name in MODELS)


def _materialized(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetMaterialization]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return [m for m in (r.event_log_entry.asset_materialization for r in records) if m is not None]


def stored_ic_days(materialized: list[dg.AssetMaterialization]) -> int:
    """The most IC days to date that a run's IC reports recorded (0: it wrote none, or none were known yet)."""
    return max((m.metadata["days"].value for m in materialized if m.asset_key in IC_KEYS and "days" in m.metadata),
               default=0)


def stored_a_backtest(materialized: list[dg.AssetMaterialization]) -> bool:
    """Whether a run traded a model's sessions again (the leaderboard's Ann. Ret, IR and MDD come from them)."""
    return any(m.asset_key in BACKTEST_KEYS for m in materialized)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, request_job=leaderboard_job,
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10,
                      description="Rebuild reports/leaderboard after every successful run that stored daily IC, "
                                  "or traded a backtest once there is a leaderboard.")
def refresh_leaderboard(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    """One request per successful run of this code location (the daily job, a backfill from the UI, a range from
    the command line) whose IC reports hold days, or that traded a backtest (found in review: one re-run from the
    launchpad with other settings left the leaderboard's portfolio columns as they were, marked fresh) once a
    leaderboard exists; before any IC it would only fail."""
    run = context.dagster_run
    # (found by a user: a qrun workflow's run rebuilt the main warehouse's). A run re-executed from the UI keeps the
    # tag but runs in this code location, on its warehouse (found in review: the leaderboard stayed stale)
    if run.tags.get("qpipe/main") == "yes" and "dagster/parent_run_id" not in run.tags:
        return dg.SkipReason(f"run {run.run_id[:8]} is one of the main job's or of qpipe qrun, whose last run ranks "
                             "the models on its own warehouse")
    materialized = _materialized(context.instance, run.run_id)  # (the run's events, read once)
    if not stored_ic_days(materialized) and not (
            stored_a_backtest(materialized) and context.instance.get_latest_materialization_event(leaderboard.key)):
        return dg.SkipReason(f"run {run.run_id[:8]} stored no daily IC and traded no backtest a leaderboard ranks")
    return dg.RunRequest(run_key=run.run_id)
