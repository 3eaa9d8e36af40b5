"""One adjustment basis per stock in the warehouse, when a back-adjusted source re-bases its history.

A back-adjusted source (Yahoo's ``Adj Close``, a vendor's cumulative factor, or closes that are split-adjusted
already) rewrites every past price at each split or dividend. A daily run reads only its own days, so the rows
stored before a split keep the old basis while the next day's arrive on the new one: a 7:1 split would show as a
-86% day in the features and labels. As Qlib's collector does when it extends a provider directory
(``YahooNormalize1dExtend`` scales new rows to the last stored close), each stock's incoming rows are scaled so
that a session both the warehouse and the source have prices for keeps its stored close: the last such session
before the rows (the ingest looks ``ANCHOR_SESSIONS`` back, and further for a stock back from a longer
suspension), or (a backfill of earlier history) the first after them, within ``ANCHOR_SESSIONS``. Prices and
factor are multiplied by k = stored close / source close, volume divided by it; the traded price (price / factor),
which the backtest's lots use, is kept. Features and labels are ratios of one stock's prices and volumes, so they
come out as from a load of the whole history on the stored basis.

Where the source's open, high or low of that session is not its stored one divided by the same k (beyond a
rounded cent), the source restated that day: the rows are still scaled by the close's k, and the stock is named.
Where the stored rows after the range are on another basis than those before it (a backfill into a gap across which
the source re-based), the rows join those before, and the stock is named with the first session after.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from qpipe.data import warehouse as wh

ANCHOR_SESSIONS = 10  # sessions before (or after) the rows searched for one the warehouse and the source share
RELATIVE, CENT = 1e-6, 0.005  # how far a stored price may be from k x the source's: float noise, a rounded cent
OHLC = ["open", "high", "low", "close"]


@dataclass(frozen=True)
class Anchored:
    """Each stock's basis: the warehouse writes its rows x ``scale`` (``wh.write_prices``)."""

    scale: dict[str, float] = field(default_factory=dict)  # instrument -> k, where the stored basis is not the source's
    restated: dict[str, pd.Timestamp] = field(default_factory=dict)  # instrument -> the anchor session it restated
    # instrument -> the first stored session after the rows, where it is on another basis than the one before them
    seams: dict[str, pd.Timestamp] = field(default_factory=dict)
    unanchored: list[str] = field(default_factory=list)  # stocks with prices in the rows and no session to anchor on


def anchor(start: pd.Timestamp, end: pd.Timestamp, priced: Iterable[str], source_near: pd.DataFrame,
           stored_near: pd.DataFrame) -> Anchored:
    """The basis of the source's rows of [start, end] (``priced``: the stocks with prices among them) in the
    warehouse: ``stored_near`` are its rows of the sessions around the range, ``source_near`` the source's rows of
    the same sessions."""
    shared = stored_near.merge(source_near, on=["date", "instrument"], suffixes=("", "_source"))
    shared = shared.dropna(subset=[*OHLC, *(f"{c}_source" for c in OHLC)])
    before = shared[shared["date"] < start].sort_values("date").drop_duplicates("instrument", keep="last")
    after = shared[shared["date"] > end].sort_values("date").drop_duplicates("instrument", keep="first")
    chosen = pd.concat([before, after[~after["instrument"].isin(before["instrument"])]])
    k = (chosen["close"] / chosen["close_source"]).to_numpy()
    both = before.merge(after, on="instrument", suffixes=("_before", "_after"))
    k_after = both["close_after"] / both["close_source_after"] * both["close_source_before"] / both["close_before"]
    split = ~np.isclose(k_after, 1.0, rtol=RELATIVE, atol=0)  # the stored rows after the range are on another basis
    seams = dict(zip(both["instrument"][split], both["date_after"][split]))
    expected = chosen[[f"{c}_source" for c in OHLC]].to_numpy() * k[:, None]
    stored = chosen[OHLC].to_numpy()
    same = (np.abs(stored - expected) <= np.maximum(RELATIVE * np.abs(stored), CENT * k[:, None])).all(axis=1)
    names = chosen["instrument"].to_numpy()
    unanchored = sorted(set(priced) - set(names))  # (suspended rows need none)
    scale = {name: factor for name, factor in zip(names, k.tolist())
             if not np.isclose(factor, 1.0, rtol=RELATIVE, atol=0)}
    restated = dict(zip(names[~same], chosen["date"].to_numpy()[~same]))
    return Anchored(scale, restated, seams, unanchored)


def anchor_to_warehouse(con: duckdb.DuckDBPyConnection, source, start: pd.Timestamp, end: pd.Timestamp,
                        priced: Iterable[str], around: pd.DataFrame) -> tuple[Anchored, list[str]]:
    """The basis in the warehouse of the source's rows of [start, end] (``priced``: the stocks with prices among
    them; ``around``: the source's rows of the sessions around the range), and the stocks with stored prices that
    nothing anchors (none before them; none within ANCHOR_SESSIONS after)."""
    one_day = pd.Timedelta(days=1)  # the stored rows around the range, not those it replaces
    stored = pd.concat([wh.read_prices(con, around["date"].min(), start - one_day),
                        wh.read_prices(con, end + one_day, around["date"].max())]) if len(around) else around
    anchored = anchor(start, end, priced, around, stored)
    far = wh.last_priced_days(con, anchored.unanchored, before=start)  # back from a suspension: its last stored day
    if len(far):
        source_far = pd.concat([source.prices(day, day) for day in sorted(far["date"].unique())])
        anchored = anchor(start, end, priced, pd.concat([around, source_far]), pd.concat([stored, far]))
    return anchored, wh.instruments_with_prices(con, anchored.unanchored, outside=(start, end))
