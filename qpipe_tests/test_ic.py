"""Daily IC / Rank IC against hand-derived values and a direct pandas groupby (Qlib's calc_ic)."""

import math

import numpy as np
import pandas as pd
import pytest

from qpipe.evaluation.ic import daily_ic, ic_summary


def test_hand_checked_days():
    dates = np.array(["2020-01-02"] * 3 + ["2020-01-03"] * 4 + ["2020-01-06"] * 2 + ["2020-01-07"] * 3, dtype="datetime64[D]")
    score = np.array([1, 2, 3, 1, 1, 2, np.nan, 5, 6, 2, 2, 2], dtype=float)
    label = np.array([1, 2, 4, 3, 1, 4, 5, 1, np.nan, 1, 2, 3], dtype=float)
    daily = daily_ic(score, label, dates)

    # Day 1: Pearson of (1,2,3) and (1,2,4) = 3 / sqrt(2 * 14/3); both monotone -> Rank IC 1.
    # Day 2: the NaN-score row drops; (1,1,2) vs (3,1,4): Pearson (4/3) / sqrt(2/3 * 42/9);
    #        ranks (1.5,1.5,3) vs (2,1,3): 1.5 / sqrt(1.5 * 2).
    # Day 3: one complete pair -> NaN.  Day 4: constant score -> NaN.
    ic = [3 / math.sqrt(2 * 14 / 3), (4 / 3) / math.sqrt(2 / 3 * 42 / 9), np.nan, np.nan]
    rank_ic = [1.0, 1.5 / math.sqrt(3), np.nan, np.nan]
    assert list(daily.index) == list(pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"]))
    np.testing.assert_allclose(daily["IC"], ic, rtol=1e-12)
    np.testing.assert_allclose(daily["Rank IC"], rank_ic, rtol=1e-12)

    summary = ic_summary(daily)  # NaN days skipped; std with ddof 1 of two values = |a - b| / sqrt(2)
    assert summary["IC"] == pytest.approx((ic[0] + ic[1]) / 2)
    assert summary["ICIR"] == pytest.approx((ic[0] + ic[1]) / 2 / (abs(ic[0] - ic[1]) / math.sqrt(2)))
    assert summary["Rank IC"] == pytest.approx((1 + rank_ic[1]) / 2)
    assert summary["Rank ICIR"] == pytest.approx((1 + rank_ic[1]) / 2 / (abs(1 - rank_ic[1]) / math.sqrt(2)))


def test_matches_a_pandas_groupby_with_ties_and_missing_values():
    rng = np.random.default_rng(0)
    n = 6000
    dates = (np.datetime64("2020-01-01") + rng.integers(0, 120, n)).astype("datetime64[D]")
    score = np.round(rng.standard_normal(n), 1)  # many ties
    label = np.round(0.2 * score + rng.standard_normal(n), 1)
    score[rng.random(n) < 0.05] = np.nan
    label[rng.random(n) < 0.1] = np.nan
    frame = pd.DataFrame({"datetime": dates, "score": score, "label": label})

    # Qlib: df.groupby(date).apply(lambda d: d["pred"].corr(d["label"])) and the same with
    # method="spearman" (scipy); DataFrame.corr's spearman is pandas' own pairwise-complete version.
    grouped = frame.groupby("datetime")[["score", "label"]]
    expected_ic = grouped.apply(lambda d: d["score"].corr(d["label"]))
    expected_rank_ic = grouped.apply(lambda d: d.corr(method="spearman").iloc[0, 1])

    daily = daily_ic(score, label, dates)
    np.testing.assert_allclose(daily["IC"], expected_ic.to_numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(daily["Rank IC"], expected_rank_ic.to_numpy(), rtol=1e-10, atol=1e-14)
    assert ic_summary(daily)["ICIR"] == pytest.approx(expected_ic.mean() / expected_ic.std(), rel=1e-10)


def test_days_without_a_known_label_give_an_empty_report_not_an_error():
    """Found by the deployment test: the IC report of the first scored days (no label known yet) crashed."""
    empty = daily_ic(np.array([]), np.array([]), np.array([], dtype="datetime64[ns]"))
    assert list(empty.columns) == ["IC", "Rank IC"] and len(empty) == 0
