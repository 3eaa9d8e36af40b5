"""Qlib's portfolio backtest: ``TopkDropoutStrategy`` traded by ``SimulatorExecutor`` on a daily ``Exchange``
(reference/qlib.md §9.3), with Qlib's names for every setting. No Dagster here.

Each session T, in order:
1. the strategy reads the scores of the session before T (never T's own: no look-ahead);
2. it ranks the holdings and the best ``topk + n_drop - len(holdings)`` other names; it sells the holdings
   among the ``n_drop`` worst of both, and buys the first ``len(sold) + topk - len(holdings)`` others;
3. a stock is not traded when suspended (no price, or no volume: Qlib's collector empties such a day) or at its
   limit move (``|change| >= limit_threshold``;
   with ``forbid_all_trade_at_limit`` either limit blocks both sides), nor sold before ``hold_thresh`` days;
4. sells execute first at the deal price, cost ``max(value * close_cost, min_cost)``; then the cash after
   sells times ``risk_degree`` is split equally over the buys, each amount rounded down to ``trade_unit``
   raw shares through the factor, cost ``max(value * open_cost, min_cost)``, clipped to the cash left;
5. at the close, holdings are valued at their close (a suspended one at its last price); the day's
   ``return`` is (value change + cost) / the value before, ``cost`` and ``turnover`` are per that value.
Each day's orders also give Qlib's trade indicators (``indicators_normal``): ``ffr``, the mean share of an order's
amount dealt (a buy clipped to the cash left, or rounded to no lot at all); ``pa``, the price advantage, and ``pos``,
the share of orders with one, are 0 at the daily exchange's one level, where the trade price is the base price.
Prices are adjusted (Qlib's ``$close``), amounts are in adjusted shares, as Qlib keeps them.
"""

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qpipe.evaluation.risk import risk_analysis

INDICATOR_COLUMNS = ("ffr", "pa", "pos", "deal_amount", "value", "count")  # Qlib's trade indicators of a session


DealPrice = Literal["close", "open", "vwap"]


class BacktestConfig(BaseModel):
    """Qlib's ``port_analysis_config``: strategy kwargs, backtest kwargs and exchange kwargs, flat."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # an infinite cost is no setting

    topk: int = Field(50, ge=1, description="stocks held")
    n_drop: int = Field(5, ge=0, description="holdings replaced each session at most")
    method_sell: Literal["bottom", "random"] = Field("bottom", description="which of the candidates to sell")
    method_buy: Literal["top", "random"] = Field("top", description="which of the candidates to buy")
    hold_thresh: int = Field(1, ge=0, description="sessions a stock is held at least")
    only_tradable: bool = Field(False, description="rank only the stocks tradable that session")
    forbid_all_trade_at_limit: bool = Field(True, description="a stock at either limit is neither bought nor sold")
    risk_degree: float = Field(0.95, gt=0, le=1, description="share of the account invested")
    account: float = Field(1e8, gt=0, description="the account's cash at the start")
    deal_price: DealPrice = Field("close", description="the price orders deal at ($close as Qlib's Exchange takes it)")
    open_cost: float = Field(0.0005, ge=0, description="cost of a buy, per value")
    close_cost: float = Field(0.0015, ge=0, description="cost of a sell, per value")
    min_cost: float = Field(5.0, ge=0, description="the least cost of an order")
    limit_threshold: float | None = Field(0.095, gt=0, description="the daily limit move that stops trading; none: no "
                                                                   "limit")
    trade_unit: float | None = Field(None, gt=0, description="raw shares per lot (Qlib's cn region: 100); none: "
                                                            "fractional shares")
    seed: int = Field(0, ge=0, description="for method_sell/method_buy random, with each session's date (Qlib's "
                                           "is unseeded)")

    @field_validator("limit_threshold", "trade_unit", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        """``none`` for Qlib's null (no limit, fractional shares): Dagster's run config holds no nulls."""
        return None if isinstance(value, str) and value.strip().lower() in ("none", "null") else value

    @field_validator("deal_price", mode="before")
    @classmethod
    def _qlib_field(cls, value: Any) -> Any:
        """Qlib's Exchange takes ``$close`` as well as ``close`` (it prepends the ``$``); an unknown field keeps
        its ``$`` so that the error quotes what was written."""
        if isinstance(value, str) and value.startswith("$") and value[1:] in get_args(DealPrice):
            return value[1:]
        return value


# Qlib's region defaults of the Exchange (qlib.config's _default_region_config; reference/qlib.md §9): REG_CN trades
# lots of 100 shares within a 9.5% limit, REG_US whole shares without one. An exchange -> its region; any other
# exchange trades as REG_US does (Hong Kong, London, Tokyo have no daily limit in percent: China's was applied there;
# a market with lots or limits of its own sets trade_unit and limit_threshold in port_analysis).
REGION_DEFAULTS = {"cn": {"trade_unit": 100, "limit_threshold": 0.095},
                   "us": {"trade_unit": 1, "limit_threshold": None}}
EXCHANGE_REGIONS = {"XSHG": "cn", "XSHE": "cn"}


def region_defaults(exchange: str) -> dict[str, Any]:
    """The backtest settings Qlib's region of ``exchange`` implies: cn's on Shanghai and Shenzhen, us's elsewhere."""
    return dict(REGION_DEFAULTS[EXCHANGE_REGIONS.get(exchange, "us")])


STRATEGY_SETTINGS = ("topk", "n_drop", "method_sell", "method_buy", "hold_thresh", "only_tradable",
                     "forbid_all_trade_at_limit", "risk_degree")  # TopkDropoutStrategy's and BaseSignalStrategy's
EXCHANGE_SETTINGS = ("limit_threshold", "deal_price", "open_cost", "close_cost", "min_cost", "trade_unit")
# Arguments of Qlib's TopkDropoutStrategy (and the base classes it passes them to) and of Qlib's Exchange that qpipe's
# backtest does not implement -> why. Any other name is a TypeError (ValueError for the Exchange) in Qlib.
QLIB_STRATEGY_ONLY = {
    **dict.fromkeys(("trade_exchange", "level_infra", "common_infra", "outer_trade_decision"),
                    "Qlib's backtest infrastructure: qpipe's backtest builds its own exchange and calendar"),
    **dict.fromkeys(("model", "dataset"), "Qlib's deprecated way to give the signal: qpipe trades the run's predictions"),
}
QLIB_EXCHANGE_ONLY = {
    "freq": "qpipe's exchange is daily (Qlib's default freq: day)",
    **dict.fromkeys(("start_time", "end_time"), "qpipe's exchange quotes the backtest's sessions"),
    "codes": "qpipe's exchange quotes the market's members",
    **dict.fromkeys(("subscribe_fields", "extra_quote", "quote_cls"),
                    "qpipe's exchange reads the close, the deal price and the factor of the prices asset"),
    "volume_threshold": "qpipe's exchange has no volume limit",
    "impact_cost": "qpipe's exchange has no market impact cost (Qlib's default impact_cost: 0)",
}


# Names of Qlib's port_analysis_config that qpipe takes elsewhere -> where (a user copying Qlib's YAML has them).
ELSEWHERE = {"benchmark": "the benchmark is QPIPE_BENCHMARK (an index instrument of the source), else the "
                          "equal-weighted market",
             "signal": "the backtest trades this model's stored predictions (Qlib's <PRED>)"}


def close_match(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for a misspelt name, else ``""``."""
    found = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {found[0]}?)" if found else ""


def backtest_config(settings: Mapping[str, Any], source: str) -> BacktestConfig:
    """``BacktestConfig(**settings)``, or a ValueError of one line: ``source: key = value: what is expected``."""
    try:
        return BacktestConfig(**settings)
    except ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(map(str, problem["loc"]))
        if problem["type"] == "extra_forbidden" and key in ELSEWHERE:
            raise ValueError(f"{source}: {key} = {problem['input']!r}: not a setting of the backtest: "
                             f"{ELSEWHERE[key]}") from None
        if problem["type"] == "extra_forbidden":
            raise ValueError(f"{source}: {key} = {problem['input']!r}: not a setting of the backtest"
                             f"{close_match(key, BacktestConfig.model_fields)}; valid: "
                             f"{', '.join(BacktestConfig.model_fields)}") from None
        raise ValueError(f"{source}: {key} = {problem['input']!r}: {problem['msg']}") from None


@dataclass(frozen=True)
class BacktestState:
    """Where a backtest stands after a session's close, which is all the next session needs."""

    cash: float
    account: float  # the account's value at that close
    holdings: pd.DataFrame  # instrument, amount, price (the last it was valued at), held_days


@dataclass(frozen=True)
class BacktestResult:
    report: pd.DataFrame  # per session: account, cash, value, return, cost, turnover, bench, holdings (Qlib's report_normal)
    positions: pd.DataFrame  # per session and holding: amount (adjusted shares), price, value, held_days
    trades: pd.DataFrame  # per order dealt: date, instrument, side, amount, price, value, cost
    indicators: pd.DataFrame  # per session: Qlib's trade indicators (INDICATOR_COLUMNS) of its orders
    deals_at_close: int = 0  # quotes with a close but no deal price (dealt at the close, as Qlib deals them)

    def state(self) -> BacktestState:
        """After the last session: resumes the backtest there (``backtest(..., state=)``)."""
        last = self.report.iloc[-1]
        holdings = self.positions[self.positions["date"] == self.report.index[-1]]
        return BacktestState(float(last["cash"]), float(last["account"]),
                             holdings[["instrument", "amount", "price", "held_days"]].reset_index(drop=True))

    def risk(self, mode: Literal["sum", "product"] = "sum") -> dict[str, dict[str, float]]:
        """Qlib's port_analysis: risk_analysis of the excess return without and with cost."""
        excess = self.report["return"] - self.report["bench"]
        return {"excess_return_without_cost": risk_analysis(excess, mode=mode),
                "excess_return_with_cost": risk_analysis(excess - self.report["cost"], mode=mode)}


class _Exchange:
    """Dense [session x instrument] quotes of the backtest: deal price, close, factor and tradability."""

    def __init__(self, prices: pd.DataFrame, days: Sequence, config: BacktestConfig, held: Sequence[str] = ()):
        """``held``: instruments a resumed backtest holds; one without prices in ``days`` (delisted) is suspended on
        every day, as Qlib's exchange takes a stock without quotes: kept at its last price, never traded."""
        volume = ["volume"] if "volume" in prices else []  # (hand-made frames may leave it out)
        fields = list(dict.fromkeys(["close", config.deal_price, "factor", *volume]))
        panel = prices.assign(date=pd.to_datetime(prices["date"])).set_index(["date", "instrument"])[fields].unstack()
        dates = pd.DatetimeIndex(pd.to_datetime(days))
        # sorted, as in a run over every day: ties between scores go to the same name either way
        self.instruments = panel.columns.get_level_values(1).unique().union(pd.Index(list(held), dtype=object))
        full = panel.reindex(panel.index.union(dates))

        def grid(field: str) -> pd.DataFrame:
            return full[field].reindex(columns=self.instruments)

        raw = grid("close") / grid("factor")  # the traded close
        # Qlib's $change (reference/qlib.md §1): the unadjusted close against the last one before it, across a
        # suspension too, so a stock that reopens 20% up is at its limit; a dividend's adjustment is no move
        change = raw / raw.ffill().shift(1) - 1
        self.dates = dates
        before = panel.index[panel.index < dates[0]]
        # the session each day trades the scores of: the one before it (for the first day, the prices' last before)
        self.signal_dates = pd.DatetimeIndex([before[-1] if len(before) else pd.NaT, *dates[:-1]])
        self.close = grid("close").reindex(dates).to_numpy(float)
        # Qlib's Exchange.get_deal_price: a deal price that is NaN or <= 1e-8 (a source without vwap) is the close
        price = grid(config.deal_price).reindex(dates).to_numpy(float)
        missing = np.isfinite(self.close) & ~(price > 1e-8)
        self.price = np.where(missing, self.close, price)
        self.deals_at_close = int(missing.sum())
        self.factor = grid("factor").reindex(dates).to_numpy(float)
        change = change.reindex(dates).to_numpy(float)
        self.suspended = ~np.isfinite(self.close) | ~np.isfinite(self.price)
        if "volume" in fields:  # Qlib's collector empties a day without volume (<= 0 or NaN): suspended, as there
            self.suspended |= ~(grid("volume").reindex(dates).to_numpy(float) > 0)
        if config.limit_threshold is None:
            self.limit_up = self.limit_down = np.zeros_like(self.suspended)
        else:
            self.limit_up = change >= config.limit_threshold
            self.limit_down = change <= -config.limit_threshold
        self.change = change

    def tradable(self, day: int, stock: int, side: str | None) -> bool:
        """Qlib's is_stock_tradable: not suspended, and not at the limit of the side (either limit for None)."""
        if self.suspended[day, stock]:
            return False
        if side == "buy":
            return not self.limit_up[day, stock]
        if side == "sell":
            return not self.limit_down[day, stock]
        return not (self.limit_up[day, stock] or self.limit_down[day, stock])


def _round_to_unit(amount: float, factor: float, trade_unit: float | None) -> float:
    """Down to whole lots of raw shares (Qlib adds 0.1 raw shares against float error)."""
    if trade_unit is None or not np.isfinite(factor):
        return amount
    return (amount * factor + 0.1) // trade_unit * trade_unit / factor


def _cost(value: float, rate: float, config: BacktestConfig) -> float:
    return max(value * rate, config.min_cost) if value > 1e-5 else 0.0


def _max_buy_amount(cash: float, price: float, config: BacktestConfig) -> float:
    """The most shares the cash pays for with the cost (Qlib's _get_buy_amount_by_cash_limit)."""
    if cash < config.min_cost:
        return 0.0
    if config.open_cost > 0 and cash >= config.min_cost / config.open_cost + config.min_cost:
        return cash / (1 + config.open_cost) / price
    return (cash - config.min_cost) / price


def benchmark_returns(prices: pd.DataFrame, days: Sequence, benchmark: str | None = None) -> pd.Series:
    """The benchmark's daily return: an index instrument's close-to-close change, else the equal-weighted market's
    (the mean change of the instruments with a close both days); 0 where there is none, as Qlib fills it."""
    frame = prices if not benchmark else prices[prices["instrument"] == benchmark]
    if benchmark and frame.empty:
        raise ValueError(f"benchmark {benchmark!r} has no prices in the backtest's sessions")
    close = frame.assign(date=pd.to_datetime(frame["date"])).set_index(["date", "instrument"])["close"].unstack()
    dates = pd.DatetimeIndex(pd.to_datetime(days))
    close = close.reindex(close.index.union(dates))
    change = (close / close.shift(1) - 1).reindex(dates)
    return change.mean(axis=1).fillna(0.0).rename("bench")


def backtest(scores: pd.DataFrame, prices: pd.DataFrame, days: Sequence, config: BacktestConfig | None = None,
             bench: pd.Series | None = None, state: BacktestState | None = None) -> BacktestResult:
    """Trade ``scores`` (date, instrument, score) over the sessions ``days`` on ``prices`` (date, instrument,
    close, open, vwap, factor: adjusted, NaN when suspended; include the session before the first day).

    ``bench`` is the benchmark's daily return per session (``benchmark_returns``); by default the
    equal-weighted market of ``prices``. ``state`` resumes a backtest after the session before ``days``
    (else it starts with ``config.account`` in cash).
    """
    config = config or BacktestConfig()
    holdings = state.holdings if state is not None else pd.DataFrame(columns=["instrument", "amount", "price", "held_days"])
    exchange = _Exchange(prices, days, config, held=holdings["instrument"].tolist())
    dates, stocks = list(exchange.dates), exchange.instruments.tolist()  # plain lists: indexed once per trade and holding
    signal_dates = list(exchange.signal_dates)
    index = {name: i for i, name in enumerate(stocks)}
    bench = (benchmark_returns(prices, days) if bench is None else bench.reindex(dates).fillna(0.0)).to_numpy(float)
    known = scores.assign(date=pd.to_datetime(scores["date"]), id=scores["instrument"].map(index))
    known = known[known["id"].notna()]
    by_day = {pd.Timestamp(d): (g["id"].to_numpy(np.int64), g["score"].to_numpy(float))
              for d, g in known.groupby("date")}

    cash, value_before = (config.account, config.account) if state is None else (state.cash, state.account)
    ids = [index[name] for name in holdings["instrument"]]
    amount: dict[int, float] = dict(zip(ids, holdings["amount"].astype(float)))  # held stock -> adjusted shares
    last_price: dict[int, float] = dict(zip(ids, holdings["price"].astype(float)))  # the price it was last valued at
    held_days: dict[int, int] = dict(zip(ids, holdings["held_days"].astype(int)))
    report, positions, trades, indicators = [], [], [], []
    for day, date in enumerate(dates):
        signal = by_day.get(signal_dates[day])
        day_cost = day_turnover = 0.0
        orders = []  # (amount ordered, amount dealt, value dealt) of each order: Qlib's order indicators
        if signal is not None:
            # a session's draws come from (seed, its date): resumed, in blocks or in one run, the same trades
            rng = np.random.default_rng([config.seed, date.toordinal()])
            sell, buy = _decide(*signal, list(amount), day, exchange, config, rng)
            sold_cash = cash
            for stock in sell:  # the strategy's own sells: at the deal price, all shares
                if not exchange.tradable(day, stock, None if config.forbid_all_trade_at_limit else "sell"):
                    continue
                if held_days.get(stock, 0) < config.hold_thresh:
                    continue
                price = exchange.price[day, stock]
                value = amount[stock] * price
                cost = _cost(value, config.close_cost, config)
                sold_cash += value - cost
                trades.append((date, stocks[stock], "sell", amount[stock], price, value, cost))
                orders.append((amount[stock], amount[stock], value))
                cash += value - cost
                day_cost += cost
                day_turnover += value
                del amount[stock], last_price[stock], held_days[stock]
            budget = sold_cash * config.risk_degree / len(buy) if buy else 0.0
            for stock in buy:
                if not exchange.tradable(day, stock, None if config.forbid_all_trade_at_limit else "buy"):
                    continue
                price, factor = exchange.price[day, stock], exchange.factor[day, stock]
                ordered = shares = _round_to_unit(budget / price, factor, config.trade_unit)
                value = shares * price
                if cash < max(value * config.open_cost, config.min_cost):
                    shares = 0.0
                elif cash < value + max(value * config.open_cost, config.min_cost):
                    shares = _round_to_unit(min(_max_buy_amount(cash, price, config), shares), factor, config.trade_unit)
                value = shares * price
                orders.append((ordered, shares, value))
                if value <= 1e-5:
                    continue
                cost = _cost(value, config.open_cost, config)
                trades.append((date, stocks[stock], "buy", shares, price, value, cost))
                cash -= value + cost
                day_cost += cost
                day_turnover += value
                amount[stock], last_price[stock], held_days[stock] = shares, price, 0
        for stock in amount:  # the close: value at it, a suspended holding at its last price
            if not exchange.suspended[day, stock]:
                last_price[stock] = exchange.close[day, stock]
            held_days[stock] += 1
        stock_value = sum(amount[s] * last_price[s] for s in sorted(amount))  # one order, resumed or not
        account = cash + stock_value
        report.append((date, account, cash, stock_value, (account - value_before + day_cost) / value_before,
                       day_cost / value_before, day_turnover / value_before, bench[day], len(amount)))
        positions.extend((date, stocks[s], amount[s], last_price[s], amount[s] * last_price[s], held_days[s])
                         for s in sorted(amount))
        indicators.append((date, *_trade_indicators(orders)))
        value_before = account
    return BacktestResult(
        report=pd.DataFrame(report, columns=["date", "account", "cash", "value", "return", "cost", "turnover",
                                             "bench", "holdings"]).set_index("date"),
        positions=pd.DataFrame(positions, columns=["date", "instrument", "amount", "price", "value", "held_days"]),
        trades=pd.DataFrame(trades, columns=["date", "instrument", "side", "amount", "price", "value", "cost"]),
        indicators=pd.DataFrame(indicators, columns=["date", *INDICATOR_COLUMNS]).set_index("date"),
        deals_at_close=exchange.deals_at_close)


def _trade_indicators(orders: list[tuple[float, float, float]]) -> tuple[float, ...]:
    """A session's trade indicators from its orders (Qlib's Indicator.cal_trade_indicators, method mean): an order of
    no amount has no fulfill rate (0 / 0), and a session without orders no indicators."""
    if not orders:
        return math.nan, math.nan, math.nan, 0.0, 0.0, 0
    ordered, dealt, value = np.array(orders, dtype=float).T
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = dealt / ordered
    ffr = float(np.nanmean(rates)) if np.isfinite(rates).any() else math.nan
    return ffr, 0.0, 0.0, float(dealt.sum()), float(value.sum()), len(orders)


def _decide(ids: np.ndarray, values: np.ndarray, holdings: list[int], day: int, exchange: _Exchange,
            config: BacktestConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """TopkDropoutStrategy.generate_trade_decision on one day's scores (``ids`` with a score row, ``values``):
    (holdings to sell, names to buy), best first. Names rank by score, NaN or no score last."""
    score_of = dict(zip(ids.tolist(), values.tolist()))

    def rank(stock: int) -> tuple:
        value = score_of.get(stock, math.nan)
        return (math.isnan(value), 0.0 if math.isnan(value) else -value, stock)

    def tradable(stock: int) -> bool:
        return exchange.tradable(day, stock, None)

    def first(names, n: int) -> list[int]:
        return ([s for s in names if tradable(s)] if config.only_tradable else list(names))[:max(n, 0)]

    def last(names, n: int) -> list[int]:
        kept = [s for s in names if tradable(s)] if config.only_tradable else list(names)
        return kept[-n:] if n > 0 else []

    ranked_holdings = sorted(holdings, key=rank)
    missing = np.isnan(values)
    order = ids[np.lexsort((ids, np.where(missing, 0.0, -values), missing))].tolist()  # every scored name, best first
    held = set(holdings)
    wanted = config.n_drop + config.topk - len(holdings)
    if config.method_buy == "top":
        candidates = first([s for s in order if s not in held], wanted)
    else:  # Qlib draws from the top-k of all scored names less the holdings; all of them when fewer are left
        pool = [s for s in first(order, config.topk) if s not in held]
        candidates = [int(s) for s in rng.choice(pool, wanted, replace=False)] if 0 <= wanted <= len(pool) else pool
    if config.method_sell == "bottom":
        worst = set(last(sorted({*ranked_holdings, *candidates}, key=rank), config.n_drop))
        sell = [s for s in ranked_holdings if s in worst]
    else:
        pool = [s for s in ranked_holdings if tradable(s)] if config.only_tradable else ranked_holdings
        sell = list(rng.permutation(pool))[:config.n_drop] if pool else []
    buy = candidates[:max(len(sell) + config.topk - len(holdings), 0)]
    return sell, buy
