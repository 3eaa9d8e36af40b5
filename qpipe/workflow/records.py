"""What Qlib's records print at the end of ``qrun``, for the workflow's test segment, from the warehouse: SigAnaRecord's
IC figures, and PortAnaRecord's analyses of the benchmark return, of the excess return without and with cost, and of
the trade indicators, in Qlib's words and layout, so a Qlib user finds the figures where qrun shows them."""

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd

from qpipe.data import warehouse as wh
from qpipe.evaluation import backtest_store, report
from qpipe.evaluation.ic import ic_summary
from qpipe.evaluation.risk import indicator_analysis, risk_analysis


def _between(frame: pd.DataFrame, start: date, end: date) -> pd.DataFrame:
    days = pd.to_datetime(frame["date"])
    return frame[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))]


def _analysis(title: str, frame: pd.DataFrame) -> list[str]:
    return [f"'The following are analysis results of {title}(1day).'",
            frame.to_string(float_format=lambda v: f"{v:.6f}")]


def qlib_records(con: duckdb.DuckDBPyConnection, model: str, start: date, end: date, signal: bool,
                 portfolio: bool) -> str:
    """The records' printout of ``model``'s test segment [start, end] (empty when it has none of them)."""
    lines = []
    if signal and wh.has_table(con, report.DAILY_IC):  # (a run that failed before its IC stage has none)
        daily = _between(report.read_daily_ic(con, model), start, end)
        figures = {name: round(value, 6) for name, value in ic_summary(daily).items()} if len(daily) else {}
        with_ic = int(daily["IC"].notna().sum()) if len(daily) else 0  # a day of equal scores has none
        lines.append(f"SigAnaRecord ({with_ic} sessions with an IC, of {len(daily)} with a known label): {figures}")
    if portfolio and all(wh.has_table(con, t) for t in (backtest_store.DAILY, backtest_store.INDICATORS_TABLE)):
        daily = _between(backtest_store.read_daily(con, model), start, end)
        stored = backtest_store.read_daily(con, model, backtest_store.INDICATORS_TABLE)
        indicators = _between(stored, start, end)
        if len(daily) > 1:
            for name, returns in backtest_store.return_series(daily).items():
                title = f"the {name}" if name.startswith("excess") else name  # Qlib's own wording
                lines += _analysis(title, pd.DataFrame({"risk": risk_analysis(returns)}))
        if indicators["count"].sum() > 0:
            lines += _analysis("indicators", pd.DataFrame({"value": indicator_analysis(indicators)}))
    if not lines:
        return ""
    return "\n".join([f"\nQlib's records of the test segment {start}..{end} ({model}):", *lines])


def _stored(con: duckdb.DuckDBPyConnection, model: str) -> bool:
    """Whether the warehouse holds a daily IC or a backtest day of ``model``."""
    tables = [table for table in (report.DAILY_IC, backtest_store.DAILY) if wh.has_table(con, table)]
    return any(con.execute(f"SELECT 1 FROM {table} WHERE model = ? LIMIT 1", [model]).fetchone() for table in tables)


def print_records(workflow, warehouse: Path) -> bool:
    """Print what Qlib's records print of ``workflow``'s test segment, from the DuckDB file ``warehouse`` (read only:
    ``qpipe qrun --records`` needs no provider directory); whether it holds any."""
    def of(model: str) -> str:
        return qlib_records(con, model, *workflow.test, signal=workflow.ranks_on_the_leaderboard,
                            portfolio=workflow.port_analysis is not None)

    with duckdb.connect(str(warehouse), read_only=True) as con:
        records = of(workflow.name)
        if workflow.name != workflow.model.model and not _stored(con, workflow.name) and _stored(
                con, workflow.model.model):
            # a home run before qpipe named a workflow's model as its variant (lstm_alpha158): stored as lstm (found
            # in review: "holds no records", which was not so)
            records = of(workflow.model.model)
            if records:
                records += (f"\n(stored as {workflow.model.model} by an earlier qpipe, which named the model after its "
                            f"architecture alone; a run now stores it as {workflow.name})")
    if records:
        print(records)
    return bool(records)
