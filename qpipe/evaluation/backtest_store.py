"""A model's backtest in the warehouse, day by day: what a daily run reads to go on, and writes.

reports.backtest_daily (one row per model and session: Qlib's report_normal), reports.backtest_positions
(the holdings after each close), reports.backtest_trades and reports.backtest_indicators (Qlib's trade indicators,
indicators_normal). The state after session D (cash, account,
holdings) is what the run for D+1 resumes from, so a backtest extended day by day equals one run over
the range.
"""

import json
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd

from qpipe.calendar import trading_days
from qpipe.data import warehouse as wh
from qpipe.evaluation.backtest import BacktestConfig, BacktestResult, BacktestState, backtest, benchmark_returns
from qpipe.settings import LOAD_CELLS

DAILY, POSITIONS, TRADES = "reports.backtest_daily", "reports.backtest_positions", "reports.backtest_trades"
STRATEGY = "reports.backtest_strategy"  # the settings each session was traded with: a backtest is one strategy
INDICATORS_TABLE = "reports.backtest_indicators"
DDL = {
    DAILY: "model VARCHAR NOT NULL, date DATE NOT NULL, account DOUBLE, cash DOUBLE, value DOUBLE, \"return\" DOUBLE, "
           "cost DOUBLE, turnover DOUBLE, bench DOUBLE, holdings INTEGER",
    POSITIONS: "model VARCHAR NOT NULL, date DATE NOT NULL, instrument VARCHAR NOT NULL, amount DOUBLE, price DOUBLE, "
               "value DOUBLE, held_days INTEGER",
    TRADES: "model VARCHAR NOT NULL, date DATE NOT NULL, instrument VARCHAR NOT NULL, side VARCHAR, amount DOUBLE, "
            "price DOUBLE, value DOUBLE, cost DOUBLE",
    STRATEGY: "model VARCHAR NOT NULL, date DATE NOT NULL, strategy VARCHAR NOT NULL",
    INDICATORS_TABLE: "model VARCHAR NOT NULL, date DATE NOT NULL, ffr DOUBLE, pa DOUBLE, pos DOUBLE, "
                      "deal_amount DOUBLE, value DOUBLE, count INTEGER",
}


class BacktestGap(ValueError):
    """A run that cannot go on from the stored backtest: a day missing before it, or other settings."""


def _settings(config: BacktestConfig) -> str:
    return json.dumps(config.model_dump(), sort_keys=True)


def _sessions_before(day: date, n: int) -> list[date]:
    """The ``n`` sessions before ``day`` (fewer at the start of the calendar)."""
    return [pd.Timestamp(d).date() for d in trading_days(day - timedelta(days=10 * n + 20), day)[:-1][-n:]]


def read_state(con: duckdb.DuckDBPyConnection, model: str, start: date,
               config: BacktestConfig | None = None) -> BacktestState | None:
    """The state after the session before ``start``; None when the model has no backtest day before it. A state
    traded with settings other than ``config`` is refused: going on would join two strategies into one record."""
    before = _sessions_before(start, 1)
    if not before:  # the calendar's first session: nothing can come before it
        return None
    previous = before[0]
    (stored_before,) = con.execute(f"SELECT max(date) FROM {DAILY} WHERE model = ? AND date < ?", [model, start]).fetchall()[0]
    if stored_before is None:
        return None
    if stored_before != previous:
        following = pd.Timestamp(trading_days(stored_before, start)[1]).date()
        raise BacktestGap(f"the {model} backtest stops at {stored_before}, and this run starts at {start}: materialize "
                          f"reports/{model}_backtest from {following} on first (a backtest goes on from the day "
                          "before)")
    stored = con.execute(f"SELECT strategy FROM {STRATEGY} WHERE model = ? AND date = ?", [model, previous]).fetchone()
    if config is not None and stored is not None and stored[0] != _settings(config):
        was, now = json.loads(stored[0]), config.model_dump()
        changed = ", ".join(f"{k} {was.get(k)!r} -> {now[k]!r}" for k in now if was.get(k) != now[k])
        (first,) = con.execute(f"SELECT min(date) FROM {DAILY} WHERE model = ?", [model]).fetchone()
        # the command with these settings (found in review: without them, it ran the defaults)
        given = {k: "none" if v is None else v for k, v in now.items() if v != BacktestConfig.model_fields[k].default}
        config_json = json.dumps({"ops": {f"reports__{model}_backtest": {"config": {"port_analysis": given}}}})
        raise BacktestGap(f"the stored {model} backtest up to {previous} was traded with other settings ({changed}): "
                          "going on would join two strategies into one record. Run it again from its first day with "
                          f"these (dg launch --assets reports/{model}_backtest --partition-range {first}...{start} "
                          f"--config-json '{config_json}'), or give this run the stored settings (the tear sheet's "
                          "strategy table)")
    cash, account = con.execute(f"SELECT cash, account FROM {DAILY} WHERE model = ? AND date = ?", [model, previous]).fetchall()[0]
    holdings = con.execute(f"SELECT instrument, amount, price, held_days FROM {POSITIONS} WHERE model = ? AND date = ? "
                           "ORDER BY instrument", [model, previous]).df()
    return BacktestState(cash, account, holdings)


CELLS_A_PRICE_ROW = 16  # numbers a block holds per price row: the six read, the dense grids of the exchange


def run_backtest(con: duckdb.DuckDBPyConnection, model: str, start: date, end: date, market: str, config: BacktestConfig,
                 benchmark: str = "", load_cells: int = LOAD_CELLS) -> tuple[BacktestResult, list[date]]:
    """Backtest ``model``'s stored scores over the sessions [start, end], going on from the day before, and over the
    stored days after ``end`` too, which follow from these (a day traded again changes every one after it); write it.

    The sessions are traded in blocks of about ``load_cells`` / ``CELLS_A_PRICE_ROW`` price rows, each going on from
    the state the one before left, as a daily run goes on from the day before: years of a large universe never
    hold all their prices at once (a ``random`` method draws each session from its seed and the session's date,
    so blocks change nothing). Returns the result and the stored days after ``end`` it traded again."""
    for table in DDL:
        wh.ensure_table(con, table, DDL[table])
    state = read_state(con, model, start, config)
    later = [d for (d,) in con.execute(f"SELECT date FROM {DAILY} WHERE model = ? AND date > ? ORDER BY date",
                                       [model, end]).fetchall()]
    end = later[-1] if later else end
    sessions = [pd.Timestamp(d) for d in trading_days(start, end)]
    (rows,) = con.execute(f"SELECT count(*) FROM {wh.PRICES} WHERE date BETWEEN ? AND ?", [start, end]).fetchall()[0]
    per_block = max(1, int(load_cells // max(rows / len(sessions) * CELLS_A_PRICE_ROW, 1)))
    results = []
    for k in range(0, len(sessions), per_block):
        results.append(_trade(con, model, sessions[k:k + per_block], market, config, benchmark, state))
        state = results[-1].state()
    result = BacktestResult(*(pd.concat(parts) if len(parts) > 1 else parts[0] for parts in
                              zip(*((r.report, r.positions, r.trades, r.indicators) for r in results))),
                            deals_at_close=sum(r.deals_at_close for r in results))
    frames = {DAILY: result.report.reset_index(), POSITIONS: result.positions, TRADES: result.trades,
              INDICATORS_TABLE: result.indicators.reset_index(),
              STRATEGY: pd.DataFrame({"date": result.report.index, "strategy": _settings(config)})}
    with wh.transaction(con):  # the days from start on are replaced
        for table, frame in frames.items():
            con.execute(f"DELETE FROM {table} WHERE model = ? AND date >= ?", [model, start])
            wh.insert(con, table, frame.assign(model=model, date=pd.to_datetime(frame["date"]).dt.date))
    return result, later


def _trade(con: duckdb.DuckDBPyConnection, model: str, days: list[pd.Timestamp], market: str, config: BacktestConfig,
           benchmark: str, state: BacktestState | None) -> BacktestResult:
    """The backtest of the sessions ``days`` from ``state``, on the scores and prices of those days alone."""
    first, end = days[0].date(), days[-1].date()
    two_before = next(iter(_sessions_before(first, 2)), first)  # prices for the first day's change
    scores = con.execute(f"SELECT date, instrument, score FROM {wh.PREDICTIONS} WHERE model = ? AND date BETWEEN ? AND ?",
                         [model, two_before, end]).df()
    prices = con.execute(f"SELECT date, instrument, open, close, vwap, factor, volume FROM {wh.PRICES} "
                         "WHERE date BETWEEN ? AND ?", [two_before, end]).df()
    # a stock suspended since before these days moves against its last close, which may lie further back
    prices["date"] = pd.to_datetime(prices["date"])
    priced = set(prices.loc[(prices["date"] == pd.Timestamp(two_before)) & prices["close"].notna(), "instrument"])
    waiting = sorted(set(prices["instrument"]) - priced)
    if waiting:
        earlier = wh.last_priced_days(con, waiting, two_before)[prices.columns]
        prices = pd.concat([earlier, prices], ignore_index=True) if len(earlier) else prices
    if benchmark:
        bench = benchmark_returns(prices, days, benchmark)
    else:  # the equal-weighted market: its members' mean close-to-close change
        members = con.execute(f"SELECT p.date, p.instrument, p.close FROM {wh.PRICES} p JOIN {wh.UNIVERSE} u ON "
                              "u.market = ? AND u.instrument = p.instrument AND p.date BETWEEN u.start_date AND u.end_date "
                              "WHERE p.date BETWEEN ? AND ?", [market, two_before, end]).df()
        bench = benchmark_returns(members, days)
    # the benchmark is a return series, and a stock like any other where the market holds it (Qlib trades it too)
    return backtest(scores, prices, days, config, bench=bench, state=state)


def read_daily(con: duckdb.DuckDBPyConnection, model: str | None = None, table: str = DAILY) -> pd.DataFrame:
    """The stored sessions of ``table`` (the report; or the trade indicators) of one model, or of all."""
    wh.ensure_table(con, table, DDL[table])
    where, params = ("WHERE model = ?", [model]) if model else ("", [])
    return con.execute(f"SELECT * FROM {table} {where} ORDER BY model, date", params).df()


def excess(daily: pd.DataFrame, with_cost: bool = True) -> pd.Series:
    """The daily excess return over the benchmark, after cost or before (Qlib's two port_analysis rows)."""
    return daily["return"] - daily["bench"] - (daily["cost"] if with_cost else 0.0)


def return_series(daily: pd.DataFrame) -> dict[str, pd.Series]:
    """The three daily series PortAnaRecord analyses, under Qlib's names, in Qlib's order."""
    return {"benchmark return": daily["bench"], "excess return without cost": excess(daily, with_cost=False),
            "excess return with cost": excess(daily)}


def portfolio_columns(daily: pd.DataFrame) -> pd.DataFrame:
    """Per model, the portfolio half of Qlib's table: annualized excess return, information ratio and max
    drawdown with cost (risk_analysis, mode sum)."""
    from qpipe.evaluation.risk import risk_analysis

    rows = []
    for model, group in daily.groupby("model"):
        figures = risk_analysis(excess(group)) if len(group) > 1 else dict.fromkeys(("annualized_return",
                                                                                   "information_ratio", "max_drawdown"), np.nan)
        rows.append({"model": model, "Ann. Ret": figures["annualized_return"], "IR": figures["information_ratio"],
                     "MDD": figures["max_drawdown"], "backtest days": len(group)})
    return pd.DataFrame(rows, columns=["model", "Ann. Ret", "IR", "MDD", "backtest days"])
