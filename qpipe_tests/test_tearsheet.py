"""Tear sheets (issue 15, point 4): the alphalens-style signal views worked by hand, and the HTML pages
opened offline in a real browser (headless Chromium), which must draw them with every chart."""

import math

import numpy as np
import pandas as pd
import pytest

from qpipe.evaluation import report, tearsheet
from qpipe.evaluation.backtest import BacktestConfig, backtest, benchmark_returns
from qpipe.evaluation.signal import forward_returns, signal_views
from qpipe_tests.browser import launch_chromium, not_blank

DAYS = pd.bdate_range("2024-01-01", periods=5)  # d0 .. d4
CLOSES = pd.DataFrame({"A": [10, 10, 11, 12.1, 12.1], "B": [10, 10, 9, 9, 9],
                       "C": [20, 20, 22, 22, 22], "D": [5, 5, 5, 4, 4]}, index=DAYS, dtype=float)
SCORES = {0: {"A": 4, "B": 1, "C": 3, "D": 2}, 1: {"A": 3, "B": 1, "C": 4, "D": 2},
          3: {"A": 1, "B": 2, "C": 3, "D": 4}}  # d3's return is not known by d4: it counts nowhere


def _long(scores: dict) -> pd.DataFrame:
    return pd.DataFrame([(DAYS[d], name, float(s)) for d, day in scores.items() for name, s in day.items()],
                        columns=["date", "instrument", "score"])


def test_forward_returns_start_at_the_next_close_and_are_unknown_past_the_data():
    forward = forward_returns(CLOSES.assign(B=[10, 10, np.nan, 9, 9]), horizons=(1, 2))
    assert forward[1].loc[DAYS[0], "A"] == pytest.approx(11 / 10 - 1)  # bought at d1's close, sold at d2's
    assert forward[2].loc[DAYS[0], "A"] == pytest.approx(12.1 / 10 - 1)
    assert math.isnan(forward[1].loc[DAYS[0], "B"]) and math.isnan(forward[1].loc[DAYS[1], "B"])  # suspended on d2
    assert forward[1].loc[DAYS[3]].isna().all() and forward[2].loc[DAYS[2]].isna().all()


def test_quantile_returns_spread_ic_decay_and_monthly_ic_by_hand():
    views = signal_views(_long(SCORES), CLOSES, horizons=(1, 2), quantiles=2)
    # d0: quantile 1 = B, D (returns -0.1, 0; over 2 sessions -0.1, -0.2), quantile 2 = C, A (0.1, 0.1; 0.1, 0.21)
    # d1: quantile 1 = B, D (0, -0.2; 0, -0.2), quantile 2 = A, C (0.1, 0; 0.1, 0)
    expected = pd.DataFrame({1: [(-0.05 - 0.1) / 2, (0.1 + 0.05) / 2],
                             2: [(-0.15 - 0.1) / 2 / 2, (0.155 + 0.05) / 2 / 2]}, index=[1, 2])
    np.testing.assert_allclose(views.quantile_returns.to_numpy(), expected.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(views.groups.to_numpy(), [[-0.05, 0.1], [-0.1, 0.05]], atol=1e-12)  # d0, d1
    np.testing.assert_allclose(views.spread.to_numpy(), [0.15, 0.15], atol=1e-12)
    assert list(views.spread.index) == list(DAYS[:2])
    # Rank IC: d0 ranks (B, D, C, A) = 1..4 against returns ranked 1, 2, 3.5, 3.5 -> sqrt(0.9); d1 -> sqrt(0.1);
    # over 2 sessions d0's returns rank 2, 1, 3, 4 -> 0.8, d1's as over 1 session
    assert views.ic_decay.loc[1, "Rank IC"] == pytest.approx((math.sqrt(0.9) + math.sqrt(0.1)) / 2)
    assert views.ic_decay.loc[2, "Rank IC"] == pytest.approx((0.8 + math.sqrt(0.1)) / 2)
    assert views.monthly_ic.index.tolist() == ["2024-01"]
    assert views.monthly_ic.loc["2024-01", "Rank IC"] == pytest.approx(views.ic_decay.loc[1, "Rank IC"])
    assert views.days == 2 and views.summary["Rank IC"] == pytest.approx(views.ic_decay.loc[1, "Rank IC"])


def _market(n: int = 30, days: int = 90, seed: int = 3):
    """Random-walk closes and a score that knows a little of the next return: a tear sheet with something in it."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2024-01-01", periods=days)
    names = [f"S{i:02d}" for i in range(n)]
    closes = pd.DataFrame(10 * np.exp(np.cumsum(rng.normal(0, 0.02, (days, n)), axis=0)), index=dates, columns=names)
    scores = (forward_returns(closes, (1,))[1] + rng.normal(0, 0.02, (days, n))).iloc[:-2]
    scores = scores.stack().rename("score").rename_axis(["date", "instrument"]).reset_index()
    prices = closes.stack().rename("close").rename_axis(["date", "instrument"]).reset_index()
    prices = prices.assign(open=prices["close"], vwap=prices["close"], factor=1.0)
    return closes, scores, prices


def test_the_tear_sheets_open_offline_in_a_browser_with_every_chart_drawn(tmp_path):
    from playwright.sync_api import sync_playwright

    closes, scores, prices = _market()
    days = list(closes.index[1:])
    config = BacktestConfig(topk=5, n_drop=1, account=1e6)
    result = backtest(scores, prices, days, config, bench=benchmark_returns(prices, days))
    daily = result.report.reset_index().assign(model="mlp")
    views = signal_views(scores, closes)
    charts = (report.backtest_chart(daily, "mlp", tmp_path / "mlp_backtest.png"),
              report.signal_chart(views, "mlp", tmp_path / "mlp_signal.png"))
    holdings = result.positions[result.positions["date"] == days[-1]]
    model_page = tmp_path / "mlp_tearsheet.html"
    model_page.write_text(tearsheet.model_page("mlp", days[-1].date(), daily, views, holdings, config.model_dump(),
                                               *charts, indicators=result.indicators))
    board = pd.DataFrame([{"model": "mlp", "Rank IC": views.summary["Rank IC"], "Ann. Ret": 0.1}])
    board_page = tearsheet.write_leaderboard_tearsheet(board, daily, report.cumulative_ic_chart(
        views.monthly_ic.reset_index().assign(model="mlp", date=pd.Timestamp("2024-01-31")), "all", tmp_path / "ic.png"), tmp_path)

    requested = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda request: requested.append(request.url))
        for html, images in ((model_page, 2), (board_page, 2)):
            page.goto(html.as_uri())
            drawn = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 300)")
            assert drawn == [True] * images, f"{html.name}: charts drawn {drawn}"
            shot = tmp_path / f"{html.stem}.png"
            page.screenshot(path=shot, full_page=True)
            assert not_blank(shot), f"{html.name} is blank"
        page.goto(board_page.as_uri())
        page.get_by_role("link", name="mlp").click()  # the leaderboard links the model's page
        assert page.url == model_page.as_uri()
        assert page.get_by_role("heading", name="MLP tear sheet").is_visible()
        for heading in ("Risk analysis", "Indicator analysis", "IC decay", "IC by month"):
            assert page.get_by_role("heading", name=heading).is_visible()
        browser.close()
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested  # nothing fetched
