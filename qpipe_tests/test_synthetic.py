"""The synthetic market honours the price contract and carries a learnable, planted signal."""

import io

import numpy as np
import pandas as pd
import pytest

from qpipe.calendar import trading_days
from qpipe.data.synthetic import CONCEPTS, SECTORS, SyntheticMarket, SyntheticSpec, generate_market

PRICE_FIELDS = ["open", "high", "low", "close", "vwap", "volume"]
SMALL = SyntheticSpec(n_instruments=60, start="2020-01-01", end="2021-12-31", index_size=40, n_splits=3)


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return generate_market()


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
    frame.to_parquet(buffer)
    return buffer.getvalue()


def test_same_seed_gives_byte_identical_data_and_another_seed_differs() -> None:
    first, second = generate_market(SMALL), generate_market(SMALL)
    for name in ("prices", "universe", "concepts"):
        a, b = getattr(first, name), getattr(second, name)
        pd.testing.assert_frame_equal(a, b)
        assert parquet_bytes(a) == parquet_bytes(b)
        assert pd.util.hash_pandas_object(a).equals(pd.util.hash_pandas_object(b))
    other = generate_market(SyntheticSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert parquet_bytes(other.prices) != parquet_bytes(first.prices)
    assert not np.allclose(other.prices["close"].head(500), first.prices["close"].head(500), equal_nan=True)


def test_price_frame_has_the_contract_columns_dtypes_and_order(market: SyntheticMarket) -> None:
    prices = market.prices
    assert list(prices.columns) == ["date", "instrument", *PRICE_FIELDS, "factor"]
    assert prices["date"].dtype == "datetime64[ns]"
    assert (prices["date"] == prices["date"].dt.normalize()).all()
    assert prices["instrument"].map(type).eq(str).all()
    assert prices["instrument"].str.fullmatch(r"SYN\d{4}").all()
    assert all(prices[c].dtype == np.float64 for c in [*PRICE_FIELDS, "factor"])
    assert prices["instrument"].nunique() == 300
    keys = prices[["date", "instrument"]]
    assert not keys.duplicated().any()
    assert keys.equals(keys.sort_values(["date", "instrument"], ignore_index=True))


def test_dates_are_the_trading_calendar(market: SyntheticMarket) -> None:
    spec = SyntheticSpec()
    expected = trading_days(spec.start, spec.end).astype("datetime64[ns]")
    assert np.array_equal(np.sort(market.prices["date"].unique()), expected)
    assert len(expected) == 2516  # NYSE sessions from 2015-01-02 to 2024-12-31


def test_every_traded_bar_is_consistent(market: SyntheticMarket) -> None:
    bars = market.prices.dropna(subset=["close"])
    assert (bars[PRICE_FIELDS + ["factor"]] > 0).all().all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars[["open", "close"]].max(axis=1) <= bars["high"]).all()
    assert bars["vwap"].between(bars["low"], bars["high"]).all()


def test_suspended_days_are_rare_all_nan_rows_that_keep_the_factor(market: SyntheticMarket) -> None:
    prices = market.prices
    suspended = prices["close"].isna()
    assert 0.001 < suspended.mean() < 0.006
    assert prices.loc[suspended, PRICE_FIELDS].isna().all().all()
    assert prices.loc[~suspended, PRICE_FIELDS].notna().all().all()
    assert prices["factor"].notna().all()


def test_listings_start_late_end_early_and_have_no_missing_rows_inside(market: SyntheticMarket) -> None:
    prices = market.prices
    days = np.sort(prices["date"].unique())
    span = prices.groupby("instrument")["date"].agg(["min", "max", "size"])
    assert (span["min"] > days[0]).sum() == 45  # round(0.15 * 300) late listings
    assert (span["max"] < days[-1]).sum() == 24  # round(0.08 * 300) delistings
    rows_in_span = np.searchsorted(days, span["max"]) - np.searchsorted(days, span["min"]) + 1
    assert np.array_equal(span["size"].to_numpy(), rows_in_span)


def test_first_adjusted_close_is_one_and_splits_jump_only_the_raw_price(
    market: SyntheticMarket, close: pd.DataFrame
) -> None:
    """Qlib's backward adjustment: close starts at 1.0, close/factor is the raw price."""
    prices = market.prices
    assert np.allclose(prices.groupby("instrument")["close"].first(), 1.0)
    factor = wide(market, "factor")
    ratio = (factor / factor.shift(1)).stack()
    splits = ratio[~np.isclose(ratio, 1.0)]
    assert len(splits) == 12  # SyntheticSpec().n_splits; the factor moves at splits only
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


def test_universe_spans_lie_in_listings_and_the_index_is_full(market: SyntheticMarket) -> None:
    universe, prices = market.universe, market.prices
    assert list(universe.columns) == ["market", "instrument", "start_date", "end_date"]
    assert set(universe["market"]) == {"all", "syn200"}
    listed = prices.groupby("instrument")["date"].agg(["min", "max"])
    everything = universe[universe["market"] == "all"].set_index("instrument")
    assert everything["start_date"].equals(listed["min"].rename("start_date"))
    assert everything["end_date"].equals(listed["max"].rename("end_date"))

    index = universe[universe["market"] == "syn200"]
    assert (index["start_date"] <= index["end_date"]).all()
    bounds = listed.loc[index["instrument"]].to_numpy()
    assert (index["start_date"].to_numpy() >= bounds[:, 0]).all()
    assert (index["end_date"].to_numpy() <= bounds[:, 1]).all()
    assert index["instrument"].duplicated().any()  # members leave and come back
    assert index["instrument"].nunique() > 200  # and are replaced by others

    days = np.sort(prices["date"].unique())
    starts = np.searchsorted(days, index["start_date"])
    ends = np.searchsorted(days, index["end_date"]) + 1
    members = np.zeros(len(days) + 1, dtype=int)
    np.add.at(members, starts, 1)
    np.add.at(members, ends, -1)
    assert (np.cumsum(members)[:-1] == 200).all()


def test_every_instrument_has_one_sector_and_one_to_three_concepts(market: SyntheticMarket) -> None:
    concepts = market.concepts
    assert list(concepts.columns) == ["instrument", "concept", "kind"]
    assert not concepts.duplicated(["instrument", "concept"]).any()
    counts = concepts.groupby(["instrument", "kind"]).size().unstack()
    assert len(counts) == 300
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


def test_zero_signal_strength_leaves_nothing_to_learn() -> None:
    close = wide(generate_market(SyntheticSpec(signal_strength=0.0)), "close")
    label = qlib_label(close)
    for score in (-(close / close.shift(5)), close.shift(20) / close.shift(60)):
        assert abs(rank_ic_t_stat(score, label)[1]) < 3


def test_specs_that_cannot_be_generated_are_refused() -> None:
    with pytest.raises(ValueError, match="index_size"):
        SyntheticSpec(n_instruments=100, index_size=90)
    with pytest.raises(ValueError, match="trading days"):
        generate_market(SyntheticSpec(start="2020-01-01", end="2020-02-28"))
