"""Daily IC and Rank IC exactly as Qlib's SigAnaRecord (qlib/contrib/eva/alpha.py::calc_ic).

Per date: IC = pandas Pearson of score and label on the rows where both are present; Rank IC =
Pearson of their average-tie ranks on those rows (pandas/scipy Spearman). A day with fewer than
two such rows or a constant side has a NaN IC and is skipped by the summary. Computed for all
dates at once with grouped sums, no per-day Python loop.
"""

import numpy as np
import pandas as pd


def daily_ic(score: np.ndarray, label: np.ndarray, dates: np.ndarray) -> pd.DataFrame:
    """One row per date (ascending) with columns "IC" and "Rank IC"."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    day_values, day = np.unique(dates, return_inverse=True)
    if len(day_values) == 0:  # no label known yet on the days asked for
        return pd.DataFrame({"IC": [], "Rank IC": []}, index=pd.Index(day_values, name="datetime"))
    both = ~(np.isnan(score) | np.isnan(label))
    score, label, day = score[both], label[both], day[both]
    n_days = len(day_values)
    return pd.DataFrame(
        {
            "IC": _grouped_pearson(score, label, day, n_days),
            "Rank IC": _grouped_pearson(_grouped_rank(score, day), _grouped_rank(label, day), day, n_days),
        },
        index=pd.Index(day_values, name="datetime"),
    )


def ic_summary(daily: pd.DataFrame) -> dict[str, float]:
    """SigAnaRecord's figures: means and mean/std (ddof 1, not annualized), NaN days skipped."""
    ic, rank_ic = daily["IC"], daily["Rank IC"]
    return {
        "IC": float(ic.mean()),
        "ICIR": float(ic.mean() / ic.std()),
        "Rank IC": float(rank_ic.mean()),
        "Rank ICIR": float(rank_ic.mean() / rank_ic.std()),
    }


def _grouped_pearson(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group Pearson r computed like np.corrcoef: centred sums, r = sxy / (sx * sy), clipped to [-1, 1]."""
    count = np.bincount(group, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (np.bincount(group, x, n_groups) / count)[group]
        dy = y - (np.bincount(group, y, n_groups) / count)[group]
        sxy = np.bincount(group, dx * dy, n_groups)
        sx = np.sqrt(np.bincount(group, dx * dx, n_groups))
        sy = np.sqrt(np.bincount(group, dy * dy, n_groups))
        r = sxy / sx / sy
    r[count < 2] = np.nan
    return np.clip(r, -1.0, 1.0)


def _grouped_rank(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """1-based ranks within each group, ties given their average rank (pandas method="average")."""
    order = np.lexsort((x, group))
    xs, gs = x[order], group[order]
    n = len(x)
    if n == 0:  # no day has a score and a label (a network that scores NaN): every day's IC is NaN
        return np.empty(0)
    position = np.arange(n)
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    new_run = new_group | np.r_[True, xs[1:] != xs[:-1]]
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n] - 1
    group_start = np.maximum.accumulate(np.where(new_group, position, 0))
    run_rank = (run_start + run_end) / 2 - group_start[run_start] + 1
    ranks = np.empty(n)
    ranks[order] = run_rank[np.cumsum(new_run) - 1]
    return ranks
