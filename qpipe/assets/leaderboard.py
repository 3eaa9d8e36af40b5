"""reports/leaderboard: every model's out-of-sample IC, ICIR, Rank IC and Rank ICIR to date, side by side.

Unpartitioned (one table for all days and models), so it sits outside the partitioned daily job:
``refresh_leaderboard`` requests it after each successful ``daily_pipeline`` run.
"""

import dagster as dg

from qpipe.assets.models import ic_key
from qpipe.jobs import daily_pipeline
from qpipe.models.registry import ARCHITECTURES
from qpipe.resources import Warehouse
from qpipe.settings import get_settings

LEADERBOARD_TABLE = "reports.leaderboard"


@dg.asset(
    key=["reports", "leaderboard"],
    description="IC, ICIR, Rank IC, Rank ICIR and days per model over all scored days (Qlib SigAnaRecord), "
                "best Rank IC first; DuckDB reports.leaderboard, a markdown table and a cumulative Rank IC chart.",
    deps=[dg.AssetDep(ic_key(arch)) for arch in ARCHITECTURES],
    group_name="summary",
    kinds={"duckdb", "matplotlib"},
    metadata={"dagster/table_name": LEADERBOARD_TABLE},
)
def leaderboard(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    from qpipe.data import warehouse as wh
    from qpipe.evaluation import report

    with warehouse.get_connection() as con:
        wh.ensure_table(con, report.DAILY_IC, report.DAILY_IC_DDL)
        daily = report.read_daily_ic(con)
        if daily.empty:
            raise dg.Failure("no daily IC stored yet: materialize reports/<arch>_ic for some days first")
        board = report.leaderboard(daily)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS reports; CREATE OR REPLACE TABLE {LEADERBOARD_TABLE} AS SELECT * FROM board")
    chart = report.cumulative_ic_chart(daily, "all models", get_settings().home / "reports" / "leaderboard.png",
                                       measures=("Rank IC",))
    context.log.info("\n" + board.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return dg.MaterializeResult(metadata={
        "leaderboard": dg.MetadataValue.md(board.to_markdown(index=False, floatfmt=".4f")),
        **{f"{model} Rank IC": float(value) for model, value in board.set_index("model")["Rank IC"].items()},
        "models": len(board),
        "cumulative Rank IC chart": dg.MetadataValue.path(str(chart)),
    })


leaderboard_job = dg.define_asset_job("leaderboard_job", selection=[leaderboard.key],
                                      description="Refresh reports/leaderboard.")


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[daily_pipeline],
                      request_job=leaderboard_job, default_status=dg.DefaultSensorStatus.RUNNING)
def refresh_leaderboard(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    """After every successful daily run, rebuild the leaderboard (one request per run)."""
    return dg.RunRequest(run_key=context.dagster_run.run_id)
