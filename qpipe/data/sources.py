"""One entry point over every price source: synthetic market, CSV/Parquet rows, Qlib provider.

Every source answers four questions: ``prices(start, end)`` (validated canonical rows of those
days only: a daily run reads one day, not the history), ``reference(load_cells)`` (index membership
spans and concept memberships, holding about ``load_cells`` numbers of prices at once at most),
``span()`` (its first and last day, for messages) and ``missing_members()`` (members of the market
without data, to warn about).
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from qpipe.data.qlib_provider import QlibSource
from qpipe.data.synthetic import (
    SyntheticSpec,
    generate_market,
    index_size_for,
    origin_session,
)
from qpipe.data.tabular import TabularSource
from qpipe.data.validation import CONCEPT_COLUMNS, UNIVERSE_COLUMNS, validate_prices
from qpipe.settings import LOAD_CELLS

SOURCE_KINDS = ("synthetic", "tabular", "qlib")


class Source(Protocol):
    def prices(self, start=None, end=None) -> pd.DataFrame: ...

    def reference(self, load_cells: int = LOAD_CELLS) -> tuple[pd.DataFrame, pd.DataFrame]: ...

    def span(self) -> tuple[np.datetime64, np.datetime64]: ...

    def missing_members(self) -> list[str]: ...


@dataclass(frozen=True)
class PriceBatch:
    """Validated canonical prices plus index membership spans and concept memberships."""

    prices: pd.DataFrame
    universe: pd.DataFrame
    concepts: pd.DataFrame

    def between(self, start, end) -> pd.DataFrame:
        dates = self.prices["date"]
        return self.prices[(dates >= pd.Timestamp(start)) & (dates <= pd.Timestamp(end))]


@dataclass(frozen=True)
class SyntheticSource:
    """The embedded market: any range of days is generated on demand, the same bytes whatever range is asked."""

    seed: int = 7
    n_instruments: int = 300

    @property
    def spec(self) -> SyntheticSpec:
        return SyntheticSpec(n_instruments=self.n_instruments, seed=self.seed, index_size=index_size_for(self.n_instruments))

    def prices(self, start=None, end=None) -> pd.DataFrame:
        return validate_prices(generate_market(self.spec, start=start, end=end).prices, f"synthetic(seed={self.seed})")

    def reference(self, load_cells: int = LOAD_CELLS) -> tuple[pd.DataFrame, pd.DataFrame]:
        market = generate_market(self.spec)
        return market.universe[UNIVERSE_COLUMNS], market.concepts[CONCEPT_COLUMNS]

    def span(self) -> tuple[np.datetime64, np.datetime64]:
        from qpipe.calendar import market_calendar

        return origin_session(self.spec), np.datetime64(market_calendar().last_closed_session(), "D")

    def missing_members(self) -> list[str]:
        return []


def open_source(kind: str = "synthetic", path: str = "", columns: dict | None = None, market: str = "all",
                seed: int = 7, n_instruments: int = 300, *, ingest: str = "market", benchmark: str = "",
                since: str | None = None, date_format: str = "") -> Source:
    if kind == "synthetic":
        if benchmark:
            raise ValueError(f"benchmark {benchmark!r}: the synthetic market has no index instrument; leave "
                             "QPIPE_BENCHMARK empty (the backtest then compares with the equal-weighted market)")
        return SyntheticSource(seed=seed, n_instruments=n_instruments)
    if not path:
        raise ValueError(f"the {kind!r} source needs a path (QPIPE_SOURCE_PATH or the price_source resource's path)")
    if kind == "tabular":
        return TabularSource(path, columns=dict(columns or {}), date_format=date_format, benchmark=benchmark)
    if kind == "qlib":
        return QlibSource(path, market=market, ingest=ingest, benchmark=benchmark, since=since)
    raise ValueError(f"unknown price source {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")


def load_source(kind: str = "synthetic", path: str = "", columns: dict | None = None, market: str = "all",
                seed: int = 7, n_instruments: int = 300, **options) -> PriceBatch:
    """The whole source at once (tests, benchmarks); the assets read day ranges through ``open_source``."""
    source = open_source(kind, path, columns, market, seed, n_instruments, **options)
    universe, concepts = source.reference()
    return PriceBatch(source.prices(), universe, concepts)
