"""One adjustment basis per stock in the warehouse, when a back-adjusted source re-bases its history.

A back-adjusted source (Yahoo's ``Adj Close``, a vendor's cumulative factor, or closes that are split-adjusted
already) rewrites every past price at each split or dividend. A daily run reads only its own days, so the rows
stored before a split keep the old basis while the next day's arrive on the new one: a 7:1 split would show as a
-86% day in the features and labels. As Qlib's collector does when it extends a provider directory
(``YahooNormalize1dExtend`` scales new rows to the last stored close), each stock's incoming rows are scaled so that
a session both the warehouse and the source have prices for keeps its stored close: the last such session before the
rows that the source did not restate (the ingest looks ``ANCHOR_SESSIONS`` back, and further for a stock back from a
longer suspension), or (a backfill of earlier history) the first after them, within ``ANCHOR_SESSIONS``. Prices and
factor are multiplied by k = stored close / source close, volume divided by it; the traded price (price / factor),
which the backtest's lots use, is kept. Features and labels are ratios of one stock's prices and volumes, so they
come out as from a load of the whole history on the stored basis.

A session whose stored open, high, low and close are not the source's x one k (beyond a rounded cent) was restated
by the source; so was one read before the rows whose k is not the anchor's. The stock is named with its first such
session, which keeps its stored prices (a correction taken for the basis would be a fake move in every later row);
where every session read was restated, the last one anchors all the same.
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
    # instrument -> the first session read that the source restated (the anchor's, or one before it)
    restated: dict[str, pd.Timestamp] = field(default_factory=dict)
    # instrument -> the first stored session after the rows, where it is on another basis than the one before them
    seams: dict[str, pd.Timestamp] = field(default_factory=dict)
    unanchored: list[str] = field(default_factory=list)  # stocks with prices in the rows and no session to anchor on


def anchor(start: pd.Timestamp, end: pd.Timestamp, priced: Iterable[str], source_near: pd.DataFrame,
           stored_near: pd.DataFrame) -> Anchored:
    """The basis of the source's rows of [start, end] (``priced``: the stocks with prices among them) in the
    warehouse: ``stored_near`` are its rows of the sessions around the range, ``source_near`` the source's rows of
    the same sessions."""
    shared = stored_near.merge(source_near, on=["date", "instrument"], suffixes=("", "_source"))
    shared = shared.dropna(subset=[*OHLC, *(f"{c}_source" for c in OHLC)]).sort_values("date")
    shared["k"] = shared["close"] / shared["close_source"]
    shared["agrees"] = _agrees(shared, shared["k"].to_numpy(), shared["close_source"].to_numpy())
    before = shared[shared["date"] < start]
    # the last session before the rows the source did not restate (found in review: a corrected close of the anchor
    # session made its ratio the basis of every later row, a fake move kept in the series), else the last one
    kept = before[before["agrees"]].drop_duplicates("instrument", keep="last")
    chosen_before = pd.concat([kept, before[~before["instrument"].isin(kept["instrument"])]
                               .drop_duplicates("instrument", keep="last")])
    after = shared[shared["date"] > end].drop_duplicates("instrument", keep="first")
    chosen = pd.concat([chosen_before, after[~after["instrument"].isin(chosen_before["instrument"])]])
    k = chosen["k"].to_numpy()
    both = chosen_before.merge(after, on="instrument", suffixes=("_before", "_after"))
    k_after = both["close_after"] / both["close_source_after"] * both["close_source_before"] / both["close_before"]
    split = ~np.isclose(k_after, 1.0, rtol=RELATIVE, atol=0)  # the stored rows after the range are on another basis
    seams = dict(zip(both["instrument"][split], both["date_after"][split]))
    names = chosen["instrument"].to_numpy()
    unanchored = sorted(set(priced) - set(names))  # (suspended rows need none)
    scale = {name: factor for name, factor in zip(names, k.tolist())
             if not np.isclose(factor, 1.0, rtol=RELATIVE, atol=0)}
    # every session read before the rows whose stored prices are not the source's on the chosen basis (found in
    # review: a vendor's correction of a day before the anchor session was named nowhere), and an anchor after them
    # that the source restated: the first such session of each stock
    basis = before["instrument"].map(dict(zip(names, k))).to_numpy()
    of_close = before["instrument"].map(dict(zip(names, chosen["close_source"]))).to_numpy()
    restated = pd.concat([before[~_agrees(before, basis, of_close)], chosen[~chosen["agrees"]]]).sort_values("date")
    first = restated.drop_duplicates("instrument")
    return Anchored(scale, dict(zip(first["instrument"], first["date"])), seams, unanchored)


def _agrees(rows: pd.DataFrame, k: np.ndarray, of_close: np.ndarray) -> np.ndarray:
    """Whether each row's stored open, high, low and close are the source's x ``k``, beyond float noise and the cents
    both sides round to: the stored price's, the source's, and those of the closes ``k`` is the ratio of (``of_close``:
    the source's of them; found in code review: one cent of the source's alone named most stocks of a cent-rounded
    source that re-based)."""
    source = rows[[f"{c}_source" for c in OHLC]].to_numpy()
    stored = rows[OHLC].to_numpy()
    rounding = CENT * (1 + k[:, None]) * (1 + np.abs(source) / np.abs(of_close)[:, None])
    return (np.abs(stored - source * k[:, None]) <= np.maximum(RELATIVE * np.abs(stored), rounding)).all(axis=1)


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
