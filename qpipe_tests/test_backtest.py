"""The portfolio backtest and risk figures, worked by hand (issue 15): Qlib's TopkDropoutStrategy + daily
Exchange semantics (reference/qlib.md §9.2-9.3) on a market small enough to follow on paper."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qpipe.evaluation.backtest import BacktestConfig, backtest, backtest_config, benchmark_returns
from qpipe.evaluation.risk import indicator_analysis, risk_analysis

DAYS = pd.bdate_range("2024-01-01", periods=6)  # d0 (the session before the first) .. d5
CLOSE = {  # adjusted closes; C's +10% on d4 is a limit-up move (limit_threshold 0.095)
    "A": [10, 10, 10.5, 10.5, 11, 11],
    "B": [20, 20, 20, 21, 21, 22],
    "C": [5, 5, 5, 5, 5.5, 5.5],
    "D": [8, 8, 8, 8, 8, 8],
    "E": [4, 4, 4, 4, 4, 4],
}
SCORES = {  # the score of day T, traded at T+1
    1: {"A": 0.9, "B": 0.8, "C": 0.1, "D": 0.0, "E": -0.1},
    2: {"A": 0.1, "B": 0.5, "C": 0.9, "D": 0.2, "E": 0.3},
    3: {"A": 0.3, "B": 0.1, "C": 0.0, "D": 0.9, "E": 0.2},
    4: {"A": 0.5, "B": 0.4, "C": 0.3, "D": 0.2, "E": 0.1},
}
SMALL = BacktestConfig(topk=2, n_drop=1, account=10_000, open_cost=0.001, close_cost=0.002, min_cost=1)


def _prices(close=CLOSE, factor: float = 1.0) -> pd.DataFrame:
    rows = [(day, name, price, price, price, factor) for name, prices in close.items() for day, price in zip(DAYS, prices)]
    return pd.DataFrame(rows, columns=["date", "instrument", "close", "open", "vwap", "factor"])


def _scores(scores=SCORES) -> pd.DataFrame:
    return pd.DataFrame([(DAYS[d], name, s) for d, day in scores.items() for name, s in day.items()],
                        columns=["date", "instrument", "score"])


def test_topk_dropout_trades_amounts_costs_cash_and_returns_by_hand():
    result = backtest(_scores(), _prices(), DAYS[1:], SMALL)
    # d1: no score of d0, no trade. d2 (scores of d1): buy the top 2, A and B, 0.95 x 10,000 / 2 each.
    # d3: holdings B (0.5), A (0.1) and the best other, C (0.9): A is the worst of the three, sold; C bought
    #     with the cash after the sale x 0.95. d4: C is the worst but at its limit-up move, so kept; D bought.
    # d5: no candidate left (3 held), D the worst and held a day: sold at cost min_cost.
    cash_d3 = 490.5 + 4750 - 9.5
    budget_c = cash_d3 * 0.95
    cash_after_c = cash_d3 - budget_c - budget_c * 0.001
    budget_d = cash_after_c * 0.95
    expected_trades = [
        (DAYS[2], "A", "buy", 4750 / 10.5, 10.5, 4750.0, 4.75),
        (DAYS[2], "B", "buy", 237.5, 20.0, 4750.0, 4.75),
        (DAYS[3], "A", "sell", 4750 / 10.5, 10.5, 4750.0, 9.5),
        (DAYS[3], "C", "buy", budget_c / 5, 5.0, budget_c, budget_c * 0.001),
        (DAYS[4], "D", "buy", budget_d / 8, 8.0, budget_d, 1.0),  # 0.1% of 243.75 is below min_cost
        (DAYS[5], "D", "sell", budget_d / 8, 8.0, budget_d, 1.0),
    ]
    trades = list(result.trades.itertuples(index=False, name=None))
    assert [t[:3] for t in trades] == [t[:3] for t in expected_trades]
    np.testing.assert_allclose([t[3:] for t in trades], [t[3:] for t in expected_trades], rtol=1e-12)

    cash = [10_000, 490.5, cash_after_c, cash_after_c - budget_d - 1, cash_after_c - budget_d - 1 + budget_d - 1]
    stock = [0, 9500, 237.5 * 21 + budget_c, 237.5 * 21 + budget_c / 5 * 5.5 + budget_d, 237.5 * 22 + budget_c / 5 * 5.5]
    account = np.add(cash, stock)
    before = np.r_[10_000, account[:-1]]
    cost = np.array([0, 9.5, 9.5 + budget_c * 0.001, 1, 1])
    turnover = np.array([0, 9500, 4750 + budget_c, budget_d, budget_d])
    report = result.report
    np.testing.assert_allclose(report["cash"], cash, rtol=1e-12)
    np.testing.assert_allclose(report["account"], account, rtol=1e-12)
    np.testing.assert_allclose(report["return"], (account - before + cost) / before, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(report["return"].iloc[2:], [237.5 / before[2], budget_c / 5 * 0.5 / before[3], 237.5 / before[4]])
    np.testing.assert_allclose(report["cost"], cost / before, rtol=1e-12)
    np.testing.assert_allclose(report["turnover"], turnover / before, rtol=1e-12)
    assert list(report["holdings"]) == [0, 2, 2, 3, 2]
    # the equal-weighted market: one of five names moved each day (A +5%, B +5%, A +4.76% and C +10%, B +4.76%)
    np.testing.assert_allclose(report["bench"], [0, 0.05 / 5, 0.05 / 5, (0.5 / 10.5 + 0.1) / 5, (1 / 21) / 5])
    held = result.positions[result.positions["date"] == DAYS[4]].set_index("instrument")
    assert list(held.index) == ["B", "C", "D"] and list(held["held_days"]) == [3, 2, 1]


def test_a_score_of_day_t_never_trades_before_t_plus_1():
    base = backtest(_scores(), _prices(), DAYS[1:], SMALL)
    changed = {**SCORES, 3: {"A": 0.0, "B": 0.0, "C": 0.0, "D": -1.0, "E": 5.0}}  # day 3's scores reversed
    moved = backtest(_scores(changed), _prices(), DAYS[1:], SMALL)
    same = base.trades["date"] <= DAYS[3]
    assert moved.trades[moved.trades["date"] <= DAYS[3]].equals(base.trades[same])
    assert moved.report.loc[:DAYS[3]].equals(base.report.loc[:DAYS[3]])
    assert list(moved.trades[moved.trades["date"] == DAYS[4]]["instrument"]) == ["E"]  # on d4, not before
    alone = backtest(_scores({2: {"E": 1.0}}), _prices(), DAYS[1:], SMALL)
    assert list(alone.trades["date"]) == [DAYS[3]]


def test_a_random_buy_draws_from_the_top_k_as_qlibs_topk_dropout_does():
    """Found in review (against pyqlib 0.9.7): method_buy random drew from every name not held (a name ranked 17th
    of 20 bought); Qlib's draws from the top-k of the day's scores less the holdings, all of them when fewer are
    left."""
    rng = np.random.default_rng(5)
    names = [f"S{i:02d}" for i in range(20)]
    close = {name: list(np.round(10 * np.exp(np.cumsum(rng.normal(0, 0.01, len(DAYS)))), 4)) for name in names}
    scores = {d: dict(zip(names, rng.normal(size=len(names)))) for d in range(len(DAYS) - 1)}
    config = BacktestConfig(topk=3, n_drop=1, method_buy="random", account=1e6, min_cost=0)
    result = backtest(_scores(scores), _prices(close), DAYS[1:], config)
    bought = result.trades[result.trades["side"] == "buy"]
    assert len(bought) >= 5
    for day, name in zip(bought["date"], bought["instrument"]):
        signal = scores[list(DAYS).index(day) - 1]
        assert name in sorted(signal, key=signal.get)[-3:], (day, name)


def test_a_limit_move_is_the_traded_close_against_the_last_one_across_a_suspension_not_a_dividend():
    """Found in review (against pyqlib 0.9.7): a stock back from a suspension 20% up was sold on the day it reopened,
    its change against an empty session being NaN; Qlib's $change (reference/qlib.md §1) is the unadjusted close
    against the last one before it, so the stock is at its limit. A dividend's adjustment (the factor, not the
    traded close) is no move."""
    config = SMALL.model_copy(update={"topk": 1, "n_drop": 1, "open_cost": 0, "close_cost": 0, "min_cost": 0})
    close = {"A": [10, 10, 10, np.nan, 12, 12], "B": [10, 10, 10, 10, 10, 10]}  # A suspended on d3, back at +20%
    scores = {1: {"A": 1.0, "B": 0.0}, 2: {"A": -1.0, "B": 1.0}, 3: {"A": -1.0, "B": 1.0}, 4: {"A": -1.0, "B": 1.0}}
    prices = _prices(close).assign(open=lambda f: f["close"], vwap=lambda f: f["close"])
    trades = backtest(_scores(scores), prices, DAYS[1:], config).trades
    sells = trades[trades["side"] == "sell"]
    assert list(zip(sells["date"], sells["instrument"])) == [(DAYS[5], "A")]  # not on d4, at its limit; nor on d3
    dividend = _prices({"A": [10] * 6, "B": [10] * 6})
    dividend.loc[(dividend["instrument"] == "A") & (dividend["date"] >= DAYS[3]), ["close", "open", "vwap"]] = 9.0
    dividend.loc[(dividend["instrument"] == "A") & (dividend["date"] >= DAYS[3]), "factor"] = 0.9  # traded: 10
    trades = backtest(_scores(scores), dividend, DAYS[1:], config).trades
    assert list(trades[trades["side"] == "sell"]["date"])[:1] == [DAYS[3]]  # the adjusted close's -10% is no limit


def test_a_day_without_volume_is_not_traded_as_qlibs_collector_empties_it():
    """Found in review: a row with prices and no volume was traded; Qlib's data collector makes such a day (volume
    0 or missing) all NaN, so its exchange takes the stock as suspended that day."""
    config = SMALL.model_copy(update={"topk": 1, "n_drop": 1, "open_cost": 0, "close_cost": 0, "min_cost": 0})
    scores = {1: {"A": 1.0, "B": 0.0}, 2: {"A": -1.0, "B": 1.0}, 3: {"A": -1.0, "B": 1.0}, 4: {"A": -1.0, "B": 1.0}}
    prices = _prices({"A": [10] * 6, "B": [10] * 6}).assign(volume=1000.0)
    traded = backtest(_scores(scores), prices, DAYS[1:], config).trades
    assert list(zip(traded["date"], traded["side"], traded["instrument"]))[1:] == [(DAYS[3], "sell", "A"),
                                                                                    (DAYS[3], "buy", "B")]
    prices.loc[(prices["instrument"] == "A") & (prices["date"] == DAYS[3]), "volume"] = 0.0  # no trade that day
    traded = backtest(_scores(scores), prices, DAYS[1:], config).trades
    sells = traded[traded["side"] == "sell"]
    assert list(zip(sells["date"], sells["instrument"])) == [(DAYS[4], "A")]  # held through its day without trades


@pytest.mark.parametrize("method", ["top/bottom", "random"])  # random: each session draws from (seed, its date)
def test_a_backtest_resumed_from_its_state_goes_on_exactly_as_one_run(method):
    config = SMALL if method == "top/bottom" else SMALL.model_copy(update={"method_buy": "random",
                                                                          "method_sell": "random"})
    whole = backtest(_scores(), _prices(), DAYS[1:], config)
    first = backtest(_scores(), _prices(), DAYS[1:4], config)
    rest = backtest(_scores(), _prices(), DAYS[4:], config, state=first.state())
    pd.testing.assert_frame_equal(pd.concat([first.report, rest.report]), whole.report)
    pd.testing.assert_frame_equal(pd.concat([first.trades, rest.trades], ignore_index=True), whole.trades)


def test_a_holding_delisted_before_a_resumed_backtest_stays_at_its_last_price_as_in_one_run():
    """A held stock whose prices end (delisted) is suspended from then on, as Qlib's exchange takes a stock without
    quotes. A backtest resumed after its last price (the next block, the next day's run) never sees it in its
    prices: it goes on exactly as one run, instead of failing (found at 3,000 instruments in the scaling bench)."""
    prices = _prices()
    prices = prices[~((prices["instrument"] == "B") & (prices["date"] >= DAYS[4]))]  # B bought on d2, gone from d4
    whole = backtest(_scores(), prices, DAYS[1:], SMALL)
    assert "B" in set(whole.positions[whole.positions["date"] == DAYS[3]]["instrument"])
    first = backtest(_scores(), prices, DAYS[1:4], SMALL)
    later = prices[prices["date"] >= DAYS[3]]  # the resumed run's prices: the session before its first day on
    assert "B" not in set(later[later["date"] >= DAYS[4]]["instrument"])
    rest = backtest(_scores(), later, DAYS[4:], SMALL, state=first.state())
    pd.testing.assert_frame_equal(pd.concat([first.report, rest.report]), whole.report)
    pd.testing.assert_frame_equal(pd.concat([first.trades, rest.trades], ignore_index=True), whole.trades)
    held = rest.positions[rest.positions["instrument"] == "B"]
    assert len(held) == 2 and (held["price"] == 21).all()  # its last close, on d3
    without_b = backtest(_scores(), later[later["instrument"] != "B"], DAYS[4:], SMALL, state=first.state())
    pd.testing.assert_frame_equal(without_b.report, rest.report)  # no row of B at all in the resumed run's prices


def test_suspended_stocks_are_not_traded_and_keep_their_last_price():
    close = {**CLOSE, "B": [20, 20, math.nan, 21, 21, 22]}  # B suspended on d2, the day it would be bought
    result = backtest(_scores(), _prices(close), DAYS[1:], SMALL)
    bought = result.trades[result.trades["date"] == DAYS[2]]
    assert list(bought["instrument"]) == ["A"]  # B skipped; A still gets half the budget (Qlib splits over both)
    assert bought["value"].iloc[0] == pytest.approx(4750)
    # a held stock suspended: neither sold nor revalued
    close = {**CLOSE, "A": [10, 10, 10.5, math.nan, 11, 11]}
    result = backtest(_scores(), _prices(close), DAYS[1:], SMALL)
    assert "A" not in set(result.trades[result.trades["date"] == DAYS[3]]["instrument"])
    held = result.positions[(result.positions["date"] == DAYS[3]) & (result.positions["instrument"] == "A")]
    assert held["price"].iloc[0] == 10.5


def test_limit_moves_block_trades_on_the_side_qlib_blocks():
    # B falls 10% on d3, the day A is sold and C bought in the base case; make B the one to sell.
    close = {**CLOSE, "B": [20, 20, 20, 18, 18, 18]}
    scores = {**SCORES, 2: {"A": 0.5, "B": 0.1, "C": 0.9, "D": 0.2, "E": 0.3}}
    blocked = backtest(_scores(scores), _prices(close), DAYS[1:], SMALL)
    assert "B" not in set(blocked.trades[blocked.trades["date"] == DAYS[3]]["instrument"])  # limit-down: kept
    # without forbid_all_trade_at_limit a limit-down stock can still be bought, not sold (Qlib's directions)
    open_side = SMALL.model_copy(update={"forbid_all_trade_at_limit": False})
    still = backtest(_scores(scores), _prices(close), DAYS[1:], open_side)
    assert "B" not in set(still.trades[(still.trades["date"] == DAYS[3]) & (still.trades["side"] == "sell")]["instrument"])
    base = backtest(_scores(), _prices(), DAYS[1:], SMALL)  # C at limit-up on d4: kept by default...
    assert "C" not in set(base.trades[base.trades["date"] == DAYS[4]]["instrument"])
    up = backtest(_scores(), _prices(), DAYS[1:], open_side)  # ...sold when only a limit-down blocks a sale
    assert ("C", "sell") in set(up.trades[up.trades["date"] == DAYS[4]][["instrument", "side"]].itertuples(index=False))
    no_limit = backtest(_scores(), _prices(), DAYS[1:], SMALL.model_copy(update={"limit_threshold": None}))
    assert "C" in set(no_limit.trades[no_limit.trades["date"] == DAYS[4]]["instrument"])


def test_amounts_are_whole_lots_of_raw_shares_through_the_factor():
    lots = SMALL.model_copy(update={"trade_unit": 100})
    result = backtest(_scores(), _prices(factor=2.0), DAYS[1:], lots)
    a = result.trades.iloc[0]
    # 4750 / 10.5 = 452.38 adjusted shares = 904.76 raw: 9 lots of 100 raw shares = 450 adjusted shares
    assert (a["instrument"], a["amount"], a["value"]) == ("A", 450.0, 450 * 10.5)


def test_n_drop_zero_keeps_the_holdings():
    """Qlib's get_last_n(comb, 0) is comb[-0:], the whole list: with n_drop 0 it sells every holding each day.
    qpipe keeps them, which is what n_drop = 0 means."""
    result = backtest(_scores(), _prices(), DAYS[1:], SMALL.model_copy(update={"n_drop": 0}))
    assert list(result.trades["side"]) == ["buy", "buy"] and list(result.trades["instrument"]) == ["A", "B"]


def test_an_index_benchmark_is_its_close_to_close_change():
    prices = pd.concat([_prices(), _prices({"SH000300": [100, 101, 102, 101, 103, 103]})])
    bench = benchmark_returns(prices, DAYS[1:], "SH000300")
    np.testing.assert_allclose(bench, [0.01, 1 / 101, -1 / 102, 2 / 101, 0])
    with pytest.raises(ValueError, match="benchmark 'SH000905' has no prices"):
        benchmark_returns(prices, DAYS[1:], "SH000905")


def test_a_bad_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="topk"):
        BacktestConfig(topk=0)
    with pytest.raises(ValueError, match="deal_price"):
        BacktestConfig(deal_price="midpoint")
    with pytest.raises(ValueError, match="n_dorp"):
        BacktestConfig(n_dorp=5)
    # found in review: an infinite cost was taken (an account of -inf, its days' NaN returns skipped by the figures);
    # Qlib's benchmark and signal keys got the generic "not a setting"
    with pytest.raises(ValueError, match="close_cost = inf: Input should be a finite number"):
        backtest_config({"close_cost": float("inf")}, "port_analysis")
    with pytest.raises(ValueError, match="benchmark = 'SH000300': not a setting of the backtest: the benchmark is "
                                         "QPIPE_BENCHMARK"):
        backtest_config({"benchmark": "SH000300"}, "port_analysis")
    with pytest.raises(ValueError, match="signal = '<PRED>': not a setting of the backtest: the backtest trades this "
                                         "model's stored predictions"):
        backtest_config({"signal": "<PRED>"}, "port_analysis")


@pytest.mark.parametrize("override, message", [
    ({"open_cost": -0.01}, "port_analysis: open_cost = -0.01: Input should be greater than or equal to 0"),
    ({"trade_unit": 0}, "port_analysis: trade_unit = 0: Input should be greater than 0"),
    ({"limit_threshold": "ten"}, "port_analysis: limit_threshold = 'ten': Input should be a valid number"),
])
def test_a_bad_port_analysis_run_config_fails_the_step_in_one_line_writing_nothing(tmp_path, override, message):
    """Found by a user: `dg launch --assets reports/gru_backtest` with a bad override failed late, in a pydantic
    traceback of many lines."""
    import dagster as dg

    from qpipe.assets.models import backtest_key, model_assets
    from qpipe.resources import Compute, Warehouse

    asset = next(a for a in model_assets if backtest_key("mlp") in a.keys)
    result = dg.materialize([asset], partition_key="2024-01-31", raise_on_error=False,
                            resources={"warehouse": Warehouse(database=str(tmp_path / "w.duckdb")), "compute": Compute(threads=1)},
                            run_config={"ops": {"reports__mlp_backtest": {"config": {"port_analysis": override}}}})
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert failure.cls_name == "Failure" and message in failure.message, failure.message
    assert "\n" not in failure.message.strip() and list(tmp_path.iterdir()) == []


def test_a_missing_deal_price_deals_at_the_close_as_qlibs_exchange_does():
    """Found in review: deal_price vwap on a source without vwap (Yahoo's) suspended every stock, so a backtest made
    no order and reported minus the benchmark; Qlib's get_deal_price deals those at the close, with a warning."""
    at_close = backtest(_scores(), _prices(), DAYS[1:], SMALL)
    at_vwap = SMALL.model_copy(update={"deal_price": "vwap"})
    no_vwap = backtest(_scores(), _prices().assign(vwap=np.nan), DAYS[1:], at_vwap)
    assert len(no_vwap.trades) == 6 and no_vwap.deals_at_close == 5 * 5 and at_close.deals_at_close == 0
    pd.testing.assert_frame_equal(no_vwap.trades, at_close.trades)
    pd.testing.assert_frame_equal(no_vwap.report, at_close.report)


def test_deal_price_takes_qlibs_dollar_form():
    assert BacktestConfig(deal_price="$vwap").deal_price == "vwap" and BacktestConfig(deal_price="$open").deal_price == "open"
    with pytest.raises(ValueError, match=r"deal_price = '\$high': Input should be 'close', 'open' or 'vwap'"):
        backtest_config({"deal_price": "$high"}, "port_analysis")  # quoted as written, not as 'high'


def test_the_backtest_defaults_are_those_of_the_qlib_region_of_the_markets_exchange(monkeypatch):
    """Found in review: under QPIPE_CALENDAR=auto a Qlib provider's calendar is named "day.txt of ... (XSHG hours)",
    so the backtest assets traded without Qlib's cn trade unit."""
    import qpipe.calendar
    from qpipe.assets.models import PortfolioConfig
    from qpipe.calendar import data_calendar, exchange_calendar

    # Qlib's regions: cn lots of 100 in a 9.5% limit; us whole shares without one (found in review: New York's
    # stocks were held to China's limit, in fractions of shares); an exchange of no Qlib region trades as us does
    # (found in review: Hong Kong's stocks, which have no daily limit, were held to China's, in fractions of shares)
    for code, lots, limit in (("XSHG", 100, 0.095), ("XNYS", 1, None), ("XHKG", 1, None), ("XTKS", 1, None)):
        sessions = exchange_calendar(code).trading_days("2019-01-02", "2020-12-31")
        calendar = data_calendar("day.txt of /data", "qlib day.txt", sessions)
        monkeypatch.setattr(qpipe.calendar, "market_calendar", lambda calendar=calendar: calendar)
        resolved = PortfolioConfig().resolve()
        assert calendar.matched == code and (resolved.trade_unit, resolved.limit_threshold) == (lots, limit)
        assert PortfolioConfig(port_analysis={"trade_unit": 10}).resolve().trade_unit == 10
    assert PortfolioConfig(port_analysis={"limit_threshold": 0.1}).resolve().limit_threshold == 0.1


def test_the_launchpad_shows_the_backtests_settings_and_refuses_a_misspelt_one_while_it_is_typed():
    """Found in review: the backtest's config was an empty dict in the launchpad, every setting hidden until a run's
    metadata showed it; then a dict with the defaults, which took a misspelt name until the run started. Its settings
    are typed now; the region's (lots, limit) show ``region``: the market decides them."""
    import dagster as dg

    from qpipe.definitions import defs

    job = defs.resolve_job_def("daily_pipeline")
    ops = job.run_config_schema.config_type.fields["ops"].config_type
    field = ops.fields["reports__mlp_backtest"].config_type.fields["config"].config_type.fields["port_analysis"]
    assert field.default_provided and field.default_value["topk"] == 50 and field.default_value["open_cost"] == 0.0005
    assert field.default_value["trade_unit"] == field.default_value["limit_threshold"] == "region"

    def refused(port_analysis: dict) -> str:
        with pytest.raises(dg.DagsterInvalidConfigError) as error:
            dg.validate_run_config(job, {"ops": {"reports__mlp_backtest": {"config": {"port_analysis": port_analysis}}}})
        return str(error.value)

    assert 'unexpected config entry "n_dorp" at path root:ops:reports__mlp_backtest:config:port_analysis' in refused(
        {"n_dorp": 1})
    assert 'unexpected config entry "benchmark"' in refused({"benchmark": "SH000300"})
    assert "deal_price not in enum" in refused({"deal_price": "high"})
    assert "topk" in refused({"topk": "fifty"})
    assert dg.validate_run_config(job, {"ops": {"reports__mlp_backtest": {"config": {"port_analysis": {
        "topk": 30, "account": 1000000, "risk_degree": 1, "limit_threshold": "none", "trade_unit": 100,
        "deal_price": "$close"}}}}})  # (Qlib's $close: found in review, its description named it, the type refused it)
    # through the Python API too (found in review: PortAnalysis(n_dorp=3) dropped the name in silence)
    from pydantic import ValidationError

    from qpipe.assets.models import PortAnalysis

    with pytest.raises(ValidationError, match="n_dorp"):
        PortAnalysis(n_dorp=3)
    with pytest.raises(ValidationError, match="topk\n  Input should be a valid integer"):
        PortAnalysis(topk="10")
    assert PortAnalysis(topk=10, open_cost=1, limit_threshold=None).topk == 10  # an int is a float's value


def test_risk_analysis_by_hand_in_both_modes():
    r = pd.Series([0.01, -0.02, 0.03, 0.0])
    mean, std = 0.005, math.sqrt((0.005**2 + 0.025**2 + 0.025**2 + 0.005**2) / 3)
    summed = risk_analysis(r)
    assert summed == pytest.approx({"mean": mean, "std": std, "annualized_return": mean * 238,
                                    "information_ratio": mean / std * math.sqrt(238), "max_drawdown": -0.02})
    growth = 1.01 * 0.98 * 1.03 * 1.0
    logs = [math.log(1.01), math.log(0.98), math.log(1.03), 0.0]
    log_mean = sum(logs) / 4
    log_std = math.sqrt(sum((x - log_mean) ** 2 for x in logs) / 3)
    product = risk_analysis(r, mode="product")
    assert product == pytest.approx({"mean": growth ** 0.25 - 1, "std": log_std, "annualized_return": growth ** (238 / 4) - 1,
                                     "information_ratio": (growth ** 0.25 - 1) / log_std * math.sqrt(238),
                                     "max_drawdown": 0.98 - 1})
    assert risk_analysis(r, n=252)["annualized_return"] == pytest.approx(mean * 252)
    with pytest.raises(ValueError, match="mode 'compound'"):
        risk_analysis(r, mode="compound")


GOLDEN = Path(__file__).parent / "golden" / "qlib_backtest"


@pytest.mark.parametrize("case", ["", "small_account"])
def test_the_same_trades_as_qlib_itself_on_a_provider_directory(case):
    """golden/make_backtest_golden.py ran pyqlib 0.9.7's backtest (TopkDropoutStrategy, SimulatorExecutor, the
    benchmark workflows' port_analysis_config with cn's trade unit) on a 70-stock market with factors,
    suspensions and limit moves; qpipe trades the same scores on the same prices. In small_account (1e5), most
    buys round to no lot: orders of no amount, which Qlib's trade indicators count."""
    prices, scores = pd.read_parquet(GOLDEN / "prices.parquet"), pd.read_parquet(GOLDEN / "scores.parquet")
    golden = json.loads((GOLDEN / case / "port_analysis_1day.json").read_text())
    qlib_report = pd.read_parquet(GOLDEN / case / "report_normal_1day.parquet").set_index("date")
    config = BacktestConfig(**{k: v for k, v in golden["config"].items() if k != "benchmark"})
    days = sorted(prices["date"].unique())[1:-1]  # Qlib needs a session after the last one
    stocks = prices[prices["instrument"] != golden["config"]["benchmark"]]
    result = backtest(scores, stocks, days, config, bench=benchmark_returns(prices, days, golden["config"]["benchmark"]))
    ours = result.report
    assert list(ours.index) == list(qlib_report.index)
    for column in ("return", "cost", "turnover", "account", "cash"):
        np.testing.assert_allclose(ours[column], qlib_report[column], rtol=1e-9, atol=1e-12, err_msg=column)
    # Qlib's expression engine computes the index's $close/Ref($close,1)-1 in float32; qpipe in float64
    np.testing.assert_allclose(ours["bench"], qlib_report["bench"], rtol=0, atol=1e-6)
    qlib_positions = pd.read_parquet(GOLDEN / case / "positions.parquet").sort_values(["date", "instrument"],
                                                                                   ignore_index=True)
    mine = result.positions.sort_values(["date", "instrument"], ignore_index=True)
    def held(frame):
        return list(zip(pd.to_datetime(frame["date"]), frame["instrument"].astype(str)))

    assert held(mine) == held(qlib_positions)
    np.testing.assert_allclose(mine["amount"], qlib_positions["amount"], rtol=1e-12)
    for name, figures in result.risk().items():
        for figure, value in figures.items():
            assert value == pytest.approx(golden["analysis"][name][figure], abs=1e-6), (name, figure)
    qlib_indicators = pd.read_parquet(GOLDEN / case / "indicators_normal_1day.parquet").set_index("date")
    pd.testing.assert_frame_equal(result.indicators, qlib_indicators, check_names=False, check_freq=False,
                                  check_index_type=False, check_dtype=False, rtol=1e-9)
    assert indicator_analysis(result.indicators) == pytest.approx(golden["analysis"]["indicator_analysis"])


def test_trade_indicators_and_their_analysis_by_hand():
    """Qlib's Indicator (method mean): ffr is the mean share dealt of a session's orders, an order of no amount has
    none (0 / 0) but counts; indicator_analysis weights each session by its orders. The goldens deal every order
    whole, so a clipped one is worked here."""
    from qpipe.evaluation.backtest import _trade_indicators

    # a sell dealt whole, a buy clipped to the cash left (150 of 200), a buy rounded to no lot
    clipped = _trade_indicators([(100.0, 100.0, 1000.0), (200.0, 150.0, 1500.0), (0.0, 0.0, 0.0)])
    assert clipped == (0.875, 0.0, 0.0, 250.0, 2500.0, 3)
    none = _trade_indicators([])
    assert all(math.isnan(v) for v in none[:3]) and none[3:] == (0.0, 0.0, 0)
    cash_short = _trade_indicators([(300.0, 0.0, 0.0)])  # a buy whose cost the cash cannot pay: ffr 0
    assert cash_short[0] == 0.0
    days = pd.DataFrame([clipped, none, cash_short, _trade_indicators([(50.0, 50.0, 500.0)])],
                        columns=["ffr", "pa", "pos", "deal_amount", "value", "count"])
    assert indicator_analysis(days) == pytest.approx({"ffr": (0.875 * 3 + 0.0 + 1.0) / 5, "pa": 0.0, "pos": 0.0})
