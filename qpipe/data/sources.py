"""One entry point over every price source: synthetic market, CSV/Parquet rows, Qlib provider."""

from dataclasses import dataclass

import pandas as pd

from qpipe.data.qlib_provider import QlibSource
from qpipe.data.synthetic import SyntheticSpec, generate_market, index_size_for
from qpipe.data.tabular import TabularSource
from qpipe.data.validation import validate_prices

SOURCE_KINDS = ("synthetic", "tabular", "qlib")
UNIVERSE_COLUMNS = ["market", "instrument", "start_date", "end_date"]
CONCEPT_COLUMNS = ["instrument", "concept", "kind"]


@dataclass(frozen=True)
class PriceBatch:
    """Validated canonical prices plus index membership spans and concept memberships."""

    prices: pd.DataFrame
    universe: pd.DataFrame
    concepts: pd.DataFrame

    def between(self, start, end) -> pd.DataFrame:
        dates = self.prices["date"]
        return self.prices[(dates >= pd.Timestamp(start)) & (dates <= pd.Timestamp(end))]


def listing_spans(prices: pd.DataFrame, market: str = "all") -> pd.DataFrame:
    """The ``all`` market: each instrument from its first to its last row."""
    spans = prices.groupby("instrument", sort=True)["date"].agg(start_date="min", end_date="max").reset_index()
    spans.insert(0, "market", market)
    return spans[UNIVERSE_COLUMNS]


def load_source(kind: str = "synthetic", path: str = "", columns: dict | None = None, market: str = "all",
                seed: int = 7, n_instruments: int = 300) -> PriceBatch:
    if kind == "synthetic":
        spec = SyntheticSpec(n_instruments=n_instruments, seed=seed, index_size=index_size_for(n_instruments))
        market_data = generate_market(spec, end=None)  # the whole market, origin .. today (New York)
        prices = validate_prices(market_data.prices, f"synthetic(seed={seed})")
        return PriceBatch(prices, market_data.universe[UNIVERSE_COLUMNS], market_data.concepts[CONCEPT_COLUMNS])
    if not path:
        raise ValueError(f"the {kind!r} source needs a path (QPIPE_SOURCE_PATH or the price_source resource's path)")
    no_concepts = pd.DataFrame({c: pd.Series(dtype=str) for c in CONCEPT_COLUMNS})
    if kind == "tabular":
        prices = TabularSource(path, columns=dict(columns or {})).load()
        return PriceBatch(prices, listing_spans(prices), no_concepts)
    if kind == "qlib":
        source = QlibSource(path, market=market)
        prices = source.load()
        universe = listing_spans(prices.dropna(subset=["close"]))
        if market != "all":
            universe = pd.concat([universe, source.universe()], ignore_index=True)
        return PriceBatch(prices, universe, no_concepts)
    raise ValueError(f"unknown price source {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
