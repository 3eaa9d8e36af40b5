"""One adjustment basis per stock in the warehouse, when a back-adjusted source re-bases its history.

A back-adjusted source (Yahoo's ``Adj Close``, a vendor's cumulative factor, or closes that are split-adjusted
already) rewrites every past price at each split or dividend. A daily run reads only its own days, so the rows
stored before a split keep the old basis while the next day's arrive on the new one: a 7:1 split would show as a
-86% day in the features and labels. As Qlib's collector does when it extends a provider directory
(``YahooNormalize1dExtend`` scales new rows to the last stored close), each stock's incoming rows are scaled so
that its last stored session before them keeps its stored prices. That session's open, high, low and close, as
the source has them now, must all be the stored ones times one k (a re-basing; other differences are a
restatement of that day, named, not scaled): prices and factor x k, volume x the stored/source volume ratio
(1 / k without volumes). Features and labels are ratios of one stock's prices and volumes, so they come out as
from a fresh load of the whole history; the traded price (price / factor), which the backtest's lots use, is
kept.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

ANCHOR_SESSIONS = 10  # how far back a stock's last stored session may lie (a longer suspension: not anchored)
SAME = 1e-6  # relative: ratios closer than this are the same
OHLC = ["open", "high", "low", "close"]


@dataclass(frozen=True)
class Anchored:
    rows: pd.DataFrame  # the incoming rows, on the stored basis
    rebased: dict[str, float]  # instrument -> k, for the stocks whose source basis changed
    restated: list[str]  # stocks whose prices of the anchor session changed otherwise (not scaled)


def anchor(rows: pd.DataFrame, source_before: pd.DataFrame, stored_before: pd.DataFrame) -> Anchored:
    """``rows`` on the basis of ``stored_before``: the warehouse's rows of the sessions before them, compared with
    the source's rows of the same sessions (``source_before``), on each stock's last stored session with prices."""
    stored = stored_before.dropna(subset=OHLC).sort_values("date").drop_duplicates("instrument", keep="last")
    both = stored.merge(source_before, on=["date", "instrument"], suffixes=("", "_source"))
    both = both.dropna(subset=[f"{c}_source" for c in OHLC])
    ratios = np.column_stack([both[c] / both[f"{c}_source"] for c in OHLC])
    k = ratios[:, 3]
    one_k = np.isclose(ratios, k[:, None], rtol=SAME, atol=0).all(axis=1)
    moved = one_k & ~np.isclose(k, 1.0, rtol=SAME, atol=0)
    restated = sorted(both["instrument"][~one_k])
    if not moved.any():
        return Anchored(rows, {}, restated)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_ratio = (both["volume"] / both["volume_source"]).to_numpy()
    volume_k = np.where(np.isfinite(volume_ratio) & (volume_ratio > 0), volume_ratio, 1 / k)
    names = both["instrument"].to_numpy()[moved]
    price_scale = rows["instrument"].map(dict(zip(names, k[moved]))).fillna(1.0).to_numpy()
    volume_scale = rows["instrument"].map(dict(zip(names, volume_k[moved]))).fillna(1.0).to_numpy()
    out = rows.copy()
    for column in (*OHLC, "vwap", "factor"):
        out[column] = out[column] * price_scale
    out["volume"] = out["volume"] * volume_scale
    return Anchored(out, dict(zip(names, k[moved].tolist())), restated)
