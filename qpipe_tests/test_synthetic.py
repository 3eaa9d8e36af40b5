"""The synthetic market honours the price contract, carries a learnable, planted signal and is live:
a bar for every session up to today, and a history that never changes when days are appended.

The statistics are taken on the default market up to a fixed day (END), not up to today: the same rows on every
run, whatever the date; the default end (today where the exchange is) is tested with the clock pinned."""

import datetime as dt
import io
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from qpipe.calendar import MarketCalendar, trading_days
from qpipe.data.synthetic import CONCEPTS, HORIZON_YEARS, SECTORS, SyntheticMarket, SyntheticSpec, generate_market
from qpipe.data.validation import validate_prices

PRICE_FIELDS = ["open", "high", "low", "close", "vwap", "volume"]
SMALL = SyntheticSpec(n_instruments=60, index_size=40, n_splits=20)
SMALL_END = "2021-12-31"
END = "2026-06-30"  # the default market's last day in the tests below (a session)
# Past the horizon: every listing, delisting and split of the seed has happened.
BEYOND_HORIZON = str((pd.Timestamp(SyntheticSpec().origin) + pd.DateOffset(years=HORIZON_YEARS, days=30)).date())


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return generate_market(end=END)  # the default market: origin .. END


@pytest.fixture(scope="module")
def whole_horizon() -> SyntheticMarket:
    return generate_market(SMALL, end=BEYOND_HORIZON)


@pytest.fixture(scope="module")
def close(market: SyntheticMarket) -> pd.DataFrame:
    return market.prices.pivot(index="date", columns="instrument", values="close")


def wide(market: SyntheticMarket, field: str) -> pd.DataFrame:
    return market.prices.pivot(index="date", columns="instrument", values=field)


def qlib_label(close: pd.DataFrame) -> pd.DataFrame:
    """Ref($close,-2)/Ref($close,-1)-1."""
    return close.shift(-2) / close.shift(-1) - 1


def rank_ic_t_stat(score: pd.DataFrame, label: pd.DataFrame) -> tuple[float, float]:
    """Mean daily Spearman correlation over instruments valid in both, and its t-statistic."""
    both = score.notna() & label.notna()
    s = score.where(both).rank(axis=1)
    y = label.where(both).rank(axis=1)
    s, y = s.sub(s.mean(axis=1), axis=0), y.sub(y.mean(axis=1), axis=0)
    ic = ((s * y).sum(axis=1) / np.sqrt((s * s).sum(axis=1) * (y * y).sum(axis=1))).dropna()
    return ic.mean(), ic.mean() / ic.std() * np.sqrt(len(ic))


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer)
    return buffer.getvalue()


def between(prices: pd.DataFrame, start, end) -> pd.DataFrame:
    return prices[(prices["date"] >= pd.Timestamp(start)) & (prices["date"] <= pd.Timestamp(end))]


def test_same_seed_gives_byte_identical_data_and_another_seed_differs() -> None:
    first, second = generate_market(SMALL, end=SMALL_END), generate_market(SMALL, end=SMALL_END)
    for name in ("prices", "universe", "concepts"):
        a, b = getattr(first, name), getattr(second, name)
        pd.testing.assert_frame_equal(a, b)
        assert parquet_bytes(a) == parquet_bytes(b)
        assert pd.util.hash_pandas_object(a).equals(pd.util.hash_pandas_object(b))
    other = generate_market(SyntheticSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1}), end=SMALL_END)
    assert parquet_bytes(other.prices) != parquet_bytes(first.prices)
    assert not np.allclose(other.prices["close"].head(500), first.prices["close"].head(500), equal_nan=True)


def test_same_seed_gives_the_same_bytes_for_a_day_whatever_range_is_asked(market: SyntheticMarket) -> None:
    """A sub-range is byte for byte the same days cut out of origin .. END, wherever it lies."""
    for start, end in [("2024-03-01", "2024-03-31"), ("2020-01-02", "2020-01-02"), ("2021-06-07", "2023-02-10")]:
        part = generate_market(start=start, end=end)
        assert len(part.prices) > 0
        assert parquet_bytes(part.prices) == parquet_bytes(between(market.prices, start, end))
    assert parquet_bytes(generate_market(start="2012-03-01", end="2020-02-28").prices) == parquet_bytes(
        between(market.prices, "2012-03-01", "2020-02-28"))  # there are no days before the origin


def test_appending_days_changes_no_earlier_day() -> None:
    shorter = generate_market(SMALL, end="2023-05-31")
    last = shorter.prices["date"].max()
    for end in ("2023-06-01", "2023-07-14", "2025-01-31"):
        longer = generate_market(SMALL, end=end)
        assert longer.prices["date"].max() > last
        assert parquet_bytes(longer.prices[longer.prices["date"] <= last]) == parquet_bytes(shorter.prices)
        # Spans that closed before the shorter market's end are final; open ones end at ``end``.
        closed = shorter.universe[shorter.universe["end_date"] < last]
        kept = longer.universe.merge(closed, how="inner")
        assert len(kept) == len(closed)
        still_open = shorter.universe[shorter.universe["end_date"] == last]
        continued = longer.universe.merge(still_open[["market", "instrument", "start_date"]], how="inner")
        assert len(continued) == len(still_open) and (continued["end_date"] >= last).all()
        pd.testing.assert_frame_equal(longer.concepts, shorter.concepts)


@pytest.mark.parametrize("now, last", [
    ("2024-03-05 10:00", "2024-03-05"),  # a session, trading: the market has the day so far (ingest waits for the close)
    ("2024-03-05 17:00", "2024-03-05"),  # the same session, closed
    ("2024-03-05 23:30", "2024-03-05"),  # already 2024-03-06 in UTC: today is the exchange's
    ("2024-03-10 12:00", "2024-03-08"),  # a Sunday: Friday's session
    ("2024-03-29 12:00", "2024-03-28"),  # Good Friday, a holiday of NYSE
])
def test_default_end_is_the_last_session_up_to_today(monkeypatch, now: str, last: str) -> None:
    at = dt.datetime.fromisoformat(now).replace(tzinfo=ZoneInfo("America/New_York"))
    monkeypatch.setattr(MarketCalendar, "now", lambda self: at.astimezone(ZoneInfo(self.timezone)))
    dates = generate_market(SMALL, start="2024-02-01").prices["date"]
    assert dates.max() == pd.Timestamp(last)
    assert list(np.sort(dates.unique())) == list(trading_days("2024-02-01", last).astype("datetime64[ns]"))


def test_the_default_market_spans_the_sessions_from_its_origin(market: SyntheticMarket) -> None:
    sessions = trading_days(SyntheticSpec().origin, END)
    assert market.prices["date"].max() == pd.Timestamp(END) == pd.Timestamp(sessions[-1])
    assert len(sessions) == 1631  # NYSE sessions from 2020-01-02 to 2026-06-30


def test_price_frame_has_the_contract_columns_dtypes_and_order(market: SyntheticMarket) -> None:
    prices = market.prices
    assert list(prices.columns) == ["date", "instrument", *PRICE_FIELDS, "factor"]
    assert prices["date"].dtype == "datetime64[ns]"
    assert (prices["date"] == prices["date"].dt.normalize()).all()
    assert prices["instrument"].map(type).eq(str).all()
    assert prices["instrument"].str.fullmatch(r"SYN\d{4}").all()
    assert all(prices[c].dtype == np.float64 for c in [*PRICE_FIELDS, "factor"])
    assert 240 < prices["instrument"].nunique() <= 300  # 240 listed at the origin, 60 late listers to come
    keys = prices[["date", "instrument"]]
    assert not keys.duplicated().any()
    assert keys.equals(keys.sort_values(["date", "instrument"], ignore_index=True))


def test_dates_are_the_trading_calendar(market: SyntheticMarket) -> None:
    expected = trading_days(SyntheticSpec().origin, END).astype("datetime64[ns]")
    assert np.array_equal(np.sort(market.prices["date"].unique()), expected)
    dates = np.sort(generate_market(SMALL, end="2024-12-31").prices["date"].unique())
    assert len(dates) == 1258  # NYSE sessions from 2020-01-02 to 2024-12-31


def test_every_traded_bar_is_consistent(market: SyntheticMarket) -> None:
    bars = market.prices.dropna(subset=["close"])
    assert (bars[PRICE_FIELDS + ["factor"]] > 0).all().all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars[["open", "close"]].max(axis=1) <= bars["high"]).all()
    assert bars["vwap"].between(bars["low"], bars["high"]).all()


def test_a_large_market_over_a_decade_passes_the_ingest_checks_with_plausible_volumes() -> None:
    """Found by the scaling bench: a GARCH burst of +-30% days fed the volume without bound, 1,000 instruments x
    2,500 days held volumes past 1e15 shares (SYN0326, 2019) and raw/prices refused the embedded market itself."""
    spec = SyntheticSpec(n_instruments=1000, origin="2015-01-02", index_size=300)
    prices = generate_market(spec, end="2024-12-06").prices
    validate_prices(prices, "the embedded market")  # raises on an implausible volume, as raw/prices does
    log_volume = np.log(prices["volume"])
    above_median = log_volume - log_volume.groupby(prices["instrument"]).transform("median")
    assert above_median.max() < np.log(1000)  # a crash day trades many times its usual volume, not 10^5 times


def test_suspended_days_are_rare_all_nan_rows_that_keep_the_factor(market: SyntheticMarket) -> None:
    prices = market.prices
    suspended = prices["close"].isna()
    assert 0.001 < suspended.mean() < 0.006
    assert prices.loc[suspended, PRICE_FIELDS].isna().all().all()
    assert prices.loc[~suspended, PRICE_FIELDS].notna().all().all()
    assert prices["factor"].notna().all()


def listing_spans(prices: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    return np.sort(prices["date"].unique()), prices.groupby("instrument")["date"].agg(["min", "max", "size"])


def test_listings_start_late_end_early_and_have_no_missing_rows_inside(
    market: SyntheticMarket, whole_horizon: SyntheticMarket
) -> None:
    days, span = listing_spans(market.prices)
    late, gone = (span["min"] > days[0]).sum(), (span["max"] < days[-1]).sum()
    # About 2 listings and 1.2 delistings a year (per 300) over 2020 .. END; most list later.
    assert len(span) == 240 + late < 300 and late >= 5
    assert 2 <= gone <= 36
    rows_in_span = np.searchsorted(days, span["max"]) - np.searchsorted(days, span["min"]) + 1
    assert np.array_equal(span["size"].to_numpy(), rows_in_span)

    # Over the whole horizon every event of the seed has happened: the shares are exact.
    days, span = listing_spans(whole_horizon.prices)
    assert len(span) == SMALL.n_instruments
    assert (span["min"] > days[0]).sum() == SMALL.n_late == 12  # round(0.20 * 60)
    assert (span["max"] < days[-1]).sum() == SMALL.n_delisted == 7  # round(0.12 * 60)
    assert ((span["max"] - span["min"]).dt.days >= 350).all()  # MIN_LISTED_DAYS, less weekends
    rows_in_span = np.searchsorted(days, span["max"]) - np.searchsorted(days, span["min"]) + 1
    assert np.array_equal(span["size"].to_numpy(), rows_in_span)


def test_instruments_list_and_delist_when_their_day_comes(market: SyntheticMarket) -> None:
    """Listing and delisting days are fixed by the seed, not by the range: a later end only adds."""
    early, late = listing_spans(generate_market(end="2022-12-30").prices)[1], listing_spans(market.prices)[1]
    assert set(early.index) < set(late.index)  # instruments listed since appear
    assert (late.loc[early.index, "min"] == early["min"]).all()
    ended = early["max"] < pd.Timestamp("2022-12-30")
    assert (late.loc[early.index[ended], "max"] == early.loc[ended, "max"]).all()
    assert (late.loc[early.index[~ended], "max"] >= pd.Timestamp("2022-12-30")).all()


def test_first_adjusted_close_is_one_and_splits_jump_only_the_raw_price(
    market: SyntheticMarket, close: pd.DataFrame
) -> None:
    """Qlib's backward adjustment: close starts at 1.0, close/factor is the raw price."""
    prices = market.prices
    assert np.allclose(prices.groupby("instrument")["close"].first(), 1.0)
    factor = wide(market, "factor")
    ratio = (factor / factor.shift(1)).stack()
    splits = ratio[~np.isclose(ratio, 1.0)]
    assert 3 <= len(splits) <= 36  # the splits of SyntheticSpec().n_splits = 36 that came by END
    assert np.isin(np.round(splits.to_numpy(), 9), [2.0, 3.0]).all()
    raw = close / factor
    for (day, instrument), split_ratio in splits.items():
        series = close[instrument].dropna()
        at = series.index.get_loc(day) if day in series.index else series.index.searchsorted(day)
        before, after = series.index[at - 1], series.index[at]
        adjusted_move = series[after] / series[before]
        raw_move = raw.at[after, instrument] / raw.at[before, instrument]
        assert 0.8 < adjusted_move < 1.25
        assert raw_move == pytest.approx(adjusted_move / split_ratio)


def test_the_factor_moves_at_each_split_of_the_horizon_only(whole_horizon: SyntheticMarket) -> None:
    factor = wide(whole_horizon, "factor")
    ratio = (factor / factor.shift(1)).stack()
    splits = ratio[~np.isclose(ratio, 1.0)]
    assert len(splits) == SMALL.n_splits
    assert np.isin(np.round(splits.to_numpy(), 9), [2.0, 3.0]).all()


@pytest.mark.parametrize("which", ["to_end", "whole_horizon"])
def test_universe_spans_lie_in_listings_and_the_index_is_full(
    which: str, market: SyntheticMarket, whole_horizon: SyntheticMarket
) -> None:
    data, spec = (market, SyntheticSpec()) if which == "to_end" else (whole_horizon, SMALL)
    universe, prices = data.universe, data.prices
    assert list(universe.columns) == ["market", "instrument", "start_date", "end_date"]
    assert set(universe["market"]) == {"all", spec.index_name}
    listed = prices.groupby("instrument")["date"].agg(["min", "max"])
    everything = universe[universe["market"] == "all"].set_index("instrument")
    assert everything["start_date"].equals(listed["min"].rename("start_date"))
    assert everything["end_date"].equals(listed["max"].rename("end_date"))

    index = universe[universe["market"] == spec.index_name]
    assert (index["start_date"] <= index["end_date"]).all()
    bounds = listed.loc[index["instrument"]].to_numpy()
    assert (index["start_date"].to_numpy() >= bounds[:, 0]).all()
    assert (index["end_date"].to_numpy() <= bounds[:, 1]).all()
    assert index["instrument"].duplicated().any()  # members leave and come back
    assert index["instrument"].nunique() > spec.index_size  # and are replaced by others

    days = np.sort(prices["date"].unique())
    starts = np.searchsorted(days, index["start_date"])
    ends = np.searchsorted(days, index["end_date"]) + 1
    members = np.zeros(len(days) + 1, dtype=int)
    np.add.at(members, starts, 1)
    np.add.at(members, ends, -1)
    assert (np.cumsum(members)[:-1] == spec.index_size).all()
    assert (index.groupby("instrument")["end_date"].max() <= days[-1]).all()
    assert (index["end_date"] == days[-1]).sum() == spec.index_size  # open spans end at ``end``


def test_every_instrument_has_one_sector_and_one_to_three_concepts(market: SyntheticMarket) -> None:
    concepts = market.concepts
    assert list(concepts.columns) == ["instrument", "concept", "kind"]
    assert not concepts.duplicated(["instrument", "concept"]).any()
    counts = concepts.groupby(["instrument", "kind"]).size().unstack()
    assert len(counts) == 300  # every instrument of the seed, listed yet or not
    assert set(market.prices["instrument"]) <= set(counts.index)
    assert (counts["sector"] == 1).all()
    assert counts["concept"].between(1, 3).all() and set(counts["concept"]) == {1, 2, 3}
    assert set(concepts.loc[concepts["kind"] == "sector", "concept"]) <= set(SECTORS)
    assert set(concepts.loc[concepts["kind"] == "concept", "concept"]) <= set(CONCEPTS)


def test_returns_have_factor_structure_fat_tails_and_volatility_clustering(
    market: SyntheticMarket, close: pd.DataFrame
) -> None:
    returns = np.log(close / close.shift(1))
    sector = market.concepts[market.concepts["kind"] == "sector"].set_index("instrument")["concept"]
    corr = returns.corr().to_numpy()
    same_sector = sector.loc[returns.columns].to_numpy()[:, None] == sector.loc[returns.columns].to_numpy()
    off_diagonal = ~np.eye(len(corr), dtype=bool)
    assert np.nanmean(corr[off_diagonal & ~same_sector]) > 0.1  # the market factor
    assert np.nanmean(corr[same_sector & off_diagonal]) > np.nanmean(corr[off_diagonal & ~same_sector]) + 0.05

    stacked = returns.stack()
    assert stacked.kurt() > 2  # excess kurtosis: fat tails
    assert returns.abs().apply(lambda r: r.autocorr()).mean() > 0.05  # volatility clustering
    log_volume = np.log(wide(market, "volume"))
    assert log_volume.apply(lambda v: v.autocorr()).mean() > 0.5


def test_planted_reversal_momentum_and_volume_effects_predict_the_qlib_label(
    market: SyntheticMarket, close: pd.DataFrame
) -> None:
    """Scores known at the close of T rank the return from T+1 to T+2; a shuffled label does not."""
    label = qlib_label(close)
    reversal = -(close / close.shift(5))
    momentum = close.shift(20) / close.shift(60)
    log_volume = np.log(wide(market, "volume"))
    abnormal_volume = log_volume - log_volume.rolling(20, min_periods=5).mean()
    for score in (reversal, momentum, abnormal_volume):
        ic, t_stat = rank_ic_t_stat(score, label)
        assert 0.01 < ic < 0.1 and t_stat > 3
        shuffled = label.copy()
        shuffled[:] = np.random.default_rng(0).permuted(label.to_numpy(), axis=1)  # within each day
        assert abs(rank_ic_t_stat(score, shuffled)[1]) < 3


def test_the_planted_effects_together_give_a_rank_ic_near_four_percent(
    market: SyntheticMarket, close: pd.DataFrame
) -> None:
    def cross_sectional_z(score: pd.DataFrame) -> pd.DataFrame:
        ranks = score.rank(axis=1)
        return ranks.sub(ranks.mean(axis=1), axis=0).div(ranks.std(axis=1), axis=0)

    log_volume = np.log(wide(market, "volume"))
    combined = (
        cross_sectional_z(-(close / close.shift(5)))
        + cross_sectional_z(close.shift(20) / close.shift(60))
        + cross_sectional_z(log_volume - log_volume.rolling(20, min_periods=5).mean())
    )
    ic, t_stat = rank_ic_t_stat(combined, qlib_label(close))
    assert 0.03 < ic < 0.06 and t_stat > 20


def test_zero_signal_strength_leaves_nothing_to_learn() -> None:
    close = wide(generate_market(SyntheticSpec(signal_strength=0.0), end=END), "close")
    label = qlib_label(close)
    for score in (-(close / close.shift(5)), close.shift(20) / close.shift(60)):
        assert abs(rank_ic_t_stat(score, label)[1]) < 3


def test_specs_that_cannot_be_generated_are_refused() -> None:
    with pytest.raises(ValueError, match="index_size"):
        SyntheticSpec(n_instruments=100, index_size=70)
    with pytest.raises(ValueError, match="late_listing_share"):
        SyntheticSpec(late_listing_share=1.5)
    with pytest.raises(ValueError, match="no trading days"):
        generate_market(SMALL, end="2019-12-31")
    with pytest.raises(ValueError, match="no trading days"):
        generate_market(SMALL, start="2021-01-01", end="2020-12-31")


def index_members_per_day(market: SyntheticMarket, index_name: str) -> np.ndarray:
    """How many instruments the index holds on each session of the market."""
    days = np.sort(market.prices["date"].unique())
    index = market.universe[market.universe["market"] == index_name]
    members = np.zeros(len(days) + 1, dtype=int)
    np.add.at(members, np.searchsorted(days, index["start_date"]), 1)
    np.add.at(members, np.searchsorted(days, index["end_date"]) + 1, -1)
    return np.cumsum(members)[:-1]


def test_the_default_index_fills_for_any_market_size_the_sources_ask_for() -> None:
    specs = {n: SyntheticSpec(n_instruments=n, index_size=min(200, n * 2 // 3)) for n in range(3, 2_001)}  # as
    # load_source builds them; the index of a few, over a quarter, holds index_size members every session
    for n in (3, 4, 5, 7, 10, 31, 299, 300, 301, 1000):
        spec = specs[n]
        members = index_members_per_day(generate_market(spec, end="2020-03-31"), spec.index_name)
        assert len(members) > 50 and (members == spec.index_size).all(), (n, spec.index_size, set(members))
