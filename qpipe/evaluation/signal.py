"""Alphalens-style views of a signal, beyond Qlib's SigAnaRecord: returns by score quantile, each quantile's return
session by session (Qlib's group return plot), IC by month, IC decay over horizons, the top-minus-bottom spread. No
Dagster here.

A score of session T is traded at T+1 (the backtest's rule), so its forward return over h sessions is
close(T+1+h) / close(T+1) - 1 on adjusted closes: for h = 1 that is Qlib's label,
Ref($close, -2) / Ref($close, -1) - 1, and the 1-session IC here is SigAnaRecord's.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qpipe.evaluation.ic import daily_ic, ic_summary

HORIZONS = (1, 5, 10, 20)
QUANTILES = 5


def forward_returns(closes: pd.DataFrame, horizons: Sequence[int] = HORIZONS) -> dict[int, pd.DataFrame]:
    """Per horizon h, sessions x instruments: the return from the next session's close to h sessions after it
    (NaN where either close is missing: a suspension, or a day not yet known)."""
    entry = closes.shift(-1)
    return {h: closes.shift(-1 - h) / entry - 1 for h in horizons}


def score_quantiles(scores: pd.DataFrame, quantiles: int = QUANTILES) -> pd.DataFrame:
    """Sessions x instruments: 1 (lowest scores) .. ``quantiles`` (highest) per session, ties broken by order."""
    pct = scores.rank(axis=1, method="first", pct=True)
    return np.ceil(pct * quantiles).clip(lower=1)


@dataclass(frozen=True)
class SignalViews:
    quantile_returns: pd.DataFrame  # quantile x horizon: mean forward return per session held
    groups: pd.DataFrame  # session x quantile: the quantile's mean 1-session return (sessions with one known)
    spread: pd.Series  # per session: top quantile's mean 1-session return minus the bottom's
    ic_decay: pd.DataFrame  # horizon x (IC, Rank IC): means over the sessions with that horizon known
    monthly_ic: pd.DataFrame  # month x (IC, Rank IC): means of the 1-session daily ICs
    summary: dict[str, float]  # SigAnaRecord's IC, ICIR, Rank IC, Rank ICIR of the 1-session horizon
    days: int  # sessions with a known 1-session return


def signal_views(scores: pd.DataFrame, closes: pd.DataFrame, horizons: Sequence[int] = HORIZONS,
                 quantiles: int = QUANTILES) -> SignalViews:
    """``scores``: long (date, instrument, score); ``closes``: sessions x instruments, adjusted, covering them."""
    wide = scores.pivot(index="date", columns="instrument", values="score")
    closes = closes.reindex(columns=closes.columns.union(wide.columns))
    forward = {h: r.reindex(index=wide.index, columns=wide.columns) for h, r in forward_returns(closes, horizons).items()}
    bucket = score_quantiles(wide, quantiles)
    per_quantile = {h: pd.DataFrame({q: forward[h].where(bucket == q).mean(axis=1) for q in range(1, quantiles + 1)})
                    for h in horizons}
    quantile_returns = pd.DataFrame({h: per_quantile[h].mean() / h for h in horizons})
    quantile_returns.index.name, quantile_returns.columns.name = "quantile", "horizon"
    first = per_quantile[horizons[0]].dropna(how="all")
    spread = (first[quantiles] - first[1]).rename("spread")

    def daily(h: int) -> pd.DataFrame:
        stacked = pd.DataFrame({"score": wide.stack(future_stack=True), "ret": forward[h].stack(future_stack=True)})
        known = stacked.dropna()
        return daily_ic(known["score"].to_numpy(), known["ret"].to_numpy(), known.index.get_level_values(0).to_numpy())

    by_horizon = {h: daily(h) for h in horizons}
    ic_decay = pd.DataFrame({h: by_horizon[h].mean() for h in horizons}).T
    ic_decay.index.name = "horizon"
    one = by_horizon[horizons[0]]
    monthly = one.groupby(pd.to_datetime(one.index).to_period("M")).mean()
    monthly.index = monthly.index.astype(str)
    monthly.index.name = "month"
    return SignalViews(quantile_returns, first, spread, ic_decay, monthly, ic_summary(one) if len(one) else {},
                       len(one))
