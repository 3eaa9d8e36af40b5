"""Qlib's ``risk_analysis`` (qlib/contrib/evaluate.py; reference/qlib.md §9.2): the figures of its benchmark table;
and its ``indicator_analysis`` of the trade indicators (fulfill rate, price advantage, positive rate).

``mode="sum"`` (Qlib's default) accumulates returns by addition, so the annualized return is the mean
times N and the drawdown is measured on the running sum; ``mode="product"`` compounds. N is 238 for
daily returns (Qlib's choice, not 252), 50 weekly, 12 monthly.
"""

from typing import Literal

import numpy as np
import pandas as pd

PERIODS_PER_YEAR = {"day": 238, "week": 50, "month": 12}
FIGURES = ("mean", "std", "annualized_return", "information_ratio", "max_drawdown")


def risk_analysis(returns: pd.Series, n: float | None = None, freq: str = "day",
                  mode: Literal["sum", "product"] = "sum") -> dict[str, float]:
    """mean, std, annualized_return, information_ratio and max_drawdown of a periodic return series."""
    r = pd.Series(returns, dtype=float)
    n = float(PERIODS_PER_YEAR[freq] if n is None else n)
    if mode == "sum":
        mean = r.mean()
        std = r.std(ddof=1)
        annualized = mean * n
        curve = r.cumsum()
        drawdown = (curve - curve.cummax()).min()
    elif mode == "product":
        curve = (1 + r).cumprod()
        mean = curve.iloc[-1] ** (1 / len(r)) - 1  # the geometric mean per period
        std = np.log1p(r).std(ddof=1)  # of log returns
        annualized = curve.iloc[-1] ** (n / len(r)) - 1
        drawdown = (curve / curve.cummax() - 1).min()
    else:
        raise ValueError(f"risk_analysis mode {mode!r}: expected 'sum' or 'product'")
    return {"mean": float(mean), "std": float(std), "annualized_return": float(annualized),
            "information_ratio": float(mean / std * np.sqrt(n)), "max_drawdown": float(drawdown)}


def indicator_analysis(indicators: pd.DataFrame) -> dict[str, float]:
    """ffr, pa and pos over the sessions, each session weighted by its orders (Qlib's method ``mean``)."""
    count = indicators["count"].astype(float)
    total = count.sum()
    return {name: float((indicators[name] * count).sum() / total) if total else float("nan")
            for name in ("ffr", "pa", "pos")}
