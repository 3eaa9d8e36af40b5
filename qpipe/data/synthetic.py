"""Deterministic, live synthetic market: the embedded default source when no real data is configured.

Returns load on a market factor, one sector factor and 1-3 concept factors plus idiosyncratic
noise; every shock is Student-t with GARCH(1,1) volatility. Three effects of modest strength are
planted in expected returns: short-term reversal, medium-term momentum and an abnormal-volume
premium. Each uses only what is known at the close of day T and moves the return from T+1 to
T+2, which is exactly Qlib's label ``Ref($close,-2)/Ref($close,-1)-1`` observed at T.

Prices follow Qlib's backward adjustment (reference/qlib.md §1.3): adjusted = raw x factor,
adjusted volume = raw volume / factor, the adjusted close on an instrument's first day is 1.0,
and ``factor`` is constant except at splits, where it is multiplied by the split ratio from
the split day on, so ``close / factor`` (the raw price) drops while ``close`` stays continuous.
Suspended days are rows whose price fields and volume are NaN (``factor`` kept).

The market is *live*: it starts at a fixed ``origin`` session and has a bar for every session of the
configured calendar (XNYS by default) up to today (or any ``end``); appending days never changes the past.

* Every random number of a session comes from its own counter-based generator: Philox keyed by
  the seed, with the session's date ordinal and a stream number in the counter. A day's draws
  therefore do not depend on which range is asked for, on how many days come before it or after it.
* The simulation always runs from ``BURN_IN`` sessions before ``origin`` up to ``end`` (GARCH,
  the volume AR(1) and the momentum/reversal windows are path-dependent) and the requested
  ``[start, end]`` is sliced out of it, so a sub-range is byte for byte the same rows as the same
  days cut out of a longer range.
* Per-instrument structure (sectors, concepts, betas, vols, listing price and cap) and the
  calendar dates of every listing, delisting, split and suspension are drawn once from the seed
  over a fixed horizon, ``origin`` .. ``origin + HORIZON_YEARS``; an instrument whose listing day
  is after ``end`` simply has no rows yet, and one whose delisting day is after ``end`` is still
  listed. After the horizon the instruments still listed go on trading, with no further events.
* Index membership (top ``index_size`` by cap, quarterly rebalance, a delisted member replaced at
  once) only looks at the past, computed from ``origin``.

The one range-dependent output is ``universe``: its spans cover ``origin`` .. ``end`` (not clipped
at ``start``), and a listing or membership still open at ``end`` has ``end_date`` = the last
session on or before ``end``. ``concepts`` lists every instrument of the seed, including those
that list after ``end``, so the set of concept names never changes as days are appended.
"""

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from qpipe.calendar import MarketCalendar, market_calendar

SECTORS = (
    "Energy", "Materials", "Industrials", "ConsumerDiscretionary", "ConsumerStaples", "HealthCare",
    "Financials", "InformationTechnology", "CommunicationServices", "Utilities", "RealEstate",
)
CONCEPTS = (
    "AI", "Cloud", "Semiconductors", "ElectricVehicles", "CleanEnergy", "Biotech", "Fintech",
    "ECommerce", "Cybersecurity", "Gaming", "Robotics", "5G", "Cannabis", "Defense", "Travel",
    "Streaming",
)
PRICE_COLUMNS = ("open", "high", "low", "close", "vwap", "volume")

ORIGIN = "2020-01-02"  # first simulated session of the default market
HORIZON_YEARS = 30  # listings, delistings, splits and suspensions are drawn over origin .. origin + 30y
BURN_IN = 80  # simulated sessions before the origin, so windows and GARCH are warm on day 0
MIN_LISTED_DAYS = 365  # calendar days a delisting instrument is listed at least
EDGE_DAYS = 14  # splits and suspension runs keep this many calendar days from listing and delisting
SESSIONS_PER_DAY = 252 / 365.25  # NYSE sessions per calendar day, to turn a row rate into a count
NEVER = 10**7  # calendar-day offset of the delisting of an instrument that never delists
STREAM_DAILY = 0  # Philox counter word for a session's shocks, volume noise and bar shapes

MARKET_DRIFT = 0.0003
FACTOR_VOLS = {"market": 0.010, "sector": 0.006, "concept": 0.005}
IDIO_VOL = 0.016
GARCH_ALPHA, GARCH_BETA = 0.07, 0.91
T_DF = 5
REVERSAL_DAYS = 5
MOMENTUM_FROM, MOMENTUM_TO = 60, 20  # momentum = return from T-60 to T-20
# Per-effect strength: expected return = k x instrument vol x (unit-variance signal), so k is
# roughly the rank IC that effect alone gives against an idiosyncratic return.
K_REVERSAL, K_MOMENTUM, K_VOLUME = 0.035, 0.025, 0.02
VOLUME_AR, VOLUME_ON_MOVE, VOLUME_NOISE = 0.7, 0.3, 0.25
ABS_SHOCK_MEAN = 0.75  # about E|z| of a unit-variance fat-tailed shock; centres the volume reaction
# A move's volume reaction saturates at this many of the stock's typical daily sds: a crash trades several times
# its usual volume, not 10^5 times (unbounded, a GARCH burst of +-30% days drove volumes past 1e15 shares a day).
MOVE_CAP = 6.0
TURNOVER = 0.005  # mean daily volume as a share of market cap


@dataclass(frozen=True)
class SyntheticSpec:
    """The market a seed gives; the shares and counts are over the whole horizon (``HORIZON_YEARS``).

    With the defaults and 300 instruments the horizon holds 60 late listings (2 a year), 36
    delistings (1.2 a year), 36 splits (1.2 a year, as the old 12 per decade) and 0.3% suspended
    rows. More churn is impossible for a fixed pool: every late lister is missing on the origin,
    and the index must still be full on every day.
    """

    n_instruments: int = 300
    origin: str = ORIGIN  # first simulated session (the first session on or after it)
    seed: int = 7
    index_size: int = 200  # members of the synthetic index at any time
    late_listing_share: float = 0.20  # instruments that list after ``origin``, within the horizon
    delisting_share: float = 0.12  # instruments that delist within the horizon
    n_splits: int = 36  # instruments with one 2:1 or 3:1 split within the horizon
    suspension_rate: float = 0.003  # share of listed rows that are suspended
    signal_strength: float = 1.0  # scales the planted effects; 0 gives a market with nothing to learn

    def __post_init__(self) -> None:
        pd.Timestamp(self.origin)  # refuse an unparseable origin here, not at the first run
        for name in ("late_listing_share", "delisting_share", "suspension_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1)")
        always_listed = self.n_instruments - self.n_late - self.n_delisted
        if not 0 < self.index_size <= always_listed:
            raise ValueError(
                f"index_size {self.index_size} must be in (0, {always_listed}]: the instruments "
                "listed over the whole horizon must be able to fill the index"
            )

    @property
    def n_late(self) -> int:
        return round(self.late_listing_share * self.n_instruments)

    @property
    def n_delisted(self) -> int:
        return round(self.delisting_share * self.n_instruments)

    @property
    def index_name(self) -> str:
        return f"syn{self.index_size}"


def index_size_for(n_instruments: int) -> int:
    """The embedded source's index: 200 members, or two thirds of a smaller market."""
    return min(200, n_instruments * 2 // 3)


@dataclass(frozen=True)
class SyntheticMarket:
    prices: pd.DataFrame  # canonical long frame for [start, end], sorted by (date, instrument)
    universe: pd.DataFrame  # market, instrument, start_date, end_date (spans over origin .. end)
    concepts: pd.DataFrame  # instrument, concept, kind ("sector" | "concept"), every instrument


@dataclass(frozen=True)
class _Structure:
    """Per-instrument loadings and sizes, drawn once."""

    sector: np.ndarray  # int [N]
    concepts: np.ndarray  # bool [N, C]
    beta_market: np.ndarray  # [N]
    beta_sector: np.ndarray  # [N]
    beta_concepts: np.ndarray  # [N, C], zero outside the instrument's concepts
    idio_vol: np.ndarray  # [N], unconditional daily vol
    listing_price: np.ndarray  # [N], raw close on the first listed day
    listing_cap: np.ndarray  # [N], market cap on the first listed day


@dataclass(frozen=True)
class _Events:
    """Calendar-day offsets from the origin session, fixed by the seed over the horizon."""

    listing: np.ndarray  # int [N], 0 for instruments listed at the origin
    delisting: np.ndarray  # int [N], the last listed calendar day; NEVER for most
    split_who: np.ndarray  # int [S]
    split_day: np.ndarray  # int [S]
    split_ratio: np.ndarray  # float [S], 2 or 3
    suspension_who: np.ndarray  # int [R]
    suspension_day: np.ndarray  # int [R], first calendar day of a run (its first session is on or after it)
    suspension_length: np.ndarray  # int [R], sessions, 1-4


def today() -> date:
    """Today's date where the market's exchange is (the configured calendar): the default last day."""
    return market_calendar().today()


def origin_session(spec: SyntheticSpec, calendar: MarketCalendar | None = None) -> np.datetime64:
    """The first session on or after ``spec.origin``: day 0 of the market."""
    return (calendar or market_calendar()).trading_days(spec.origin, pd.Timestamp(spec.origin) + pd.Timedelta(days=14))[0]


def generate_market(spec: SyntheticSpec = SyntheticSpec(), start=None, end=None,
                    calendar: MarketCalendar | None = None) -> SyntheticMarket:
    """The sessions in [start, end]: ``start`` defaults to the origin, ``end`` to today (where the exchange is).

    Sessions are the configured calendar's (XNYS by default), or ``calendar``'s. Days before the
    origin do not exist (an earlier ``start`` gives rows from the origin on); an ``end`` after
    today is allowed and simulates those days too. Same seed -> the same bytes for any day,
    whatever range is asked; see the module docstring for what depends on ``end``.
    """
    calendar = calendar or market_calendar()
    trading_days = calendar.trading_days
    origin = origin_session(spec, calendar)
    end_day = np.datetime64(pd.Timestamp(calendar.today() if end is None else end).date(), "D")
    start_day = max(origin, np.datetime64(pd.Timestamp(origin if start is None else start).date(), "D"))
    market_days = trading_days(origin, end_day)  # the simulated sessions from the origin
    first_row = int(np.searchsorted(market_days, start_day))
    if first_row >= len(market_days):
        raise ValueError(
            f"no trading days in {start_day}..{end_day}: the synthetic market starts at its origin {origin}"
        )
    burn_in = trading_days(origin - np.timedelta64(4 * BURN_IN, "D"), origin - np.timedelta64(1, "D"))[-BURN_IN:]
    days = np.concatenate([burn_in, market_days])
    n, n_days = spec.n_instruments, len(market_days)

    seeds = np.random.SeedSequence(spec.seed).spawn(3)
    structure = _draw_structure(np.random.default_rng(seeds[0]), n)
    events = _draw_events(np.random.default_rng(seeds[1]), spec, origin)
    daily_key = seeds[2].generate_state(2, np.uint64)

    log_close, cond_vol, log_shares, draws = _simulate(daily_key, structure, days, spec.signal_strength)

    def at(offsets: np.ndarray, side: str = "left") -> np.ndarray:
        """Row of the first session on or after (``side="right"``: after) each calendar-day offset."""
        return np.searchsorted(market_days, origin + offsets.astype("timedelta64[D]"), side)

    first = at(events.listing)  # n_days: not listed by ``end``
    last = at(events.delisting, "right") - 1
    base = log_close[BURN_IN + np.minimum(first, n_days - 1), np.arange(n)]  # adjusted close 1.0 on listing
    prev_close = log_close[BURN_IN - 1 : -1] - base
    log_close, cond_vol, log_shares = log_close[BURN_IN:] - base, cond_vol[BURN_IN:], log_shares[BURN_IN:]
    draws = draws[:, BURN_IN:]

    row = np.arange(n_days)[:, None]
    listed = (row >= first) & (row <= last)
    bars = _bars(draws, log_close, prev_close, cond_vol)
    members = _index_membership(structure.listing_cap * bars["close"], listed, market_days, spec.index_size)
    split_ratio = _split_ratios(at(events.split_day), events.split_who, events.split_ratio, n_days, n)
    factor = split_ratio / structure.listing_price
    raw_volume = np.maximum(np.rint(np.exp(log_shares) * split_ratio), 1.0)
    bars["volume"] = raw_volume / factor
    suspended = _suspensions(at(events.suspension_day), events.suspension_who, events.suspension_length, n_days, n)
    for name in PRICE_COLUMNS:
        bars[name][suspended] = np.nan

    names = np.array([f"SYN{i + 1:04d}" for i in range(n)], dtype=object)
    dates = market_days.astype("datetime64[ns]")
    out = listed[first_row:]
    # Boolean indexing of [day, instrument] arrays yields rows in (date, instrument) order.
    prices = pd.DataFrame(
        {
            "date": np.broadcast_to(dates[first_row:, None], out.shape)[out],
            "instrument": np.broadcast_to(names, out.shape)[out],
        }
        | {name: bars[name][first_row:][out] for name in PRICE_COLUMNS}
        | {"factor": factor[first_row:][out]}
    )
    universe = _universe(names, dates, listed, members, spec.index_name)
    return SyntheticMarket(prices=prices, universe=universe, concepts=_concept_frame(names, structure))


def _draw_events(rng: np.random.Generator, spec: SyntheticSpec, origin: np.datetime64) -> _Events:
    """Listings, delistings, splits and suspension runs over the horizon, as calendar-day offsets.

    Late listers list uniformly over the horizon less two years; a delisting comes at least
    ``MIN_LISTED_DAYS`` after the listing, uniformly up to the horizon's end. Every draw has a size
    fixed by the spec, so none depends on the range that is generated.
    """
    n = spec.n_instruments
    horizon = int((pd.Timestamp(origin) + pd.DateOffset(years=HORIZON_YEARS) - pd.Timestamp(origin)).days)
    listing = np.zeros(n, dtype=np.int64)
    late = rng.choice(n, size=spec.n_late, replace=False)
    listing[late] = rng.integers(1, horizon - 2 * MIN_LISTED_DAYS, size=len(late))
    delisting = np.full(n, NEVER, dtype=np.int64)
    gone = rng.choice(n, size=spec.n_delisted, replace=False)
    delisting[gone] = listing[gone] + MIN_LISTED_DAYS + rng.integers(0, horizon - MIN_LISTED_DAYS - listing[gone])

    span_end = np.minimum(delisting, horizon)  # events stop at the horizon's end
    split_who = rng.choice(n, size=min(spec.n_splits, n), replace=False)
    lo, hi = listing[split_who] + EDGE_DAYS, span_end[split_who] - EDGE_DAYS
    split_day = lo + (rng.random(len(split_who)) * (hi - lo)).astype(np.int64)
    split_ratio = rng.choice([2.0, 3.0], size=len(split_who), p=[0.75, 0.25])

    span = span_end - listing  # calendar days
    lengths = rng.integers(1, 5, size=round(spec.suspension_rate * SESSIONS_PER_DAY * span.sum() / 2.5))
    who = rng.choice(n, size=len(lengths), p=span / span.sum())
    inside = span[who] - 2 * EDGE_DAYS
    day = listing[who] + EDGE_DAYS + (rng.random(len(lengths)) * inside).astype(np.int64)
    return _Events(listing, delisting, split_who, split_day, split_ratio, who, day, lengths)


def _draw_structure(rng: np.random.Generator, n: int) -> _Structure:
    n_concepts = rng.integers(1, 4, size=n)
    concept_rank = np.argsort(np.argsort(rng.random((n, len(CONCEPTS))), axis=1), axis=1)
    concepts = concept_rank < n_concepts[:, None]
    beta_concepts = concepts * rng.uniform(0.4, 1.2, size=concepts.shape) / np.sqrt(n_concepts)[:, None]
    listing_price = np.exp(rng.normal(np.log(40.0), 0.8, size=n))
    return _Structure(
        sector=rng.integers(0, len(SECTORS), size=n),
        concepts=concepts,
        beta_market=np.clip(rng.normal(1.0, 0.3, size=n), 0.3, 2.0),
        beta_sector=np.clip(rng.normal(1.0, 0.25, size=n), 0.2, None),
        beta_concepts=beta_concepts,
        idio_vol=IDIO_VOL * np.exp(rng.normal(0.0, 0.35, size=n)),
        listing_price=listing_price,
        listing_cap=np.exp(rng.normal(np.log(2e10), 1.2, size=n)),
    )


def _day_generator(key: np.ndarray, day: np.datetime64, stream: int) -> np.random.Generator:
    """The generator of one session and stream: Philox(key=seed), counter = (0, stream, date ordinal, 0)."""
    ordinal = int(day.astype(np.int64)) + 719_163  # days since 0001-01-01 (date.toordinal() - 1)
    return np.random.Generator(np.random.Philox(key=key, counter=[0, stream, ordinal, 0]))


def _simulate(
    key: np.ndarray, s: _Structure, days: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log adjusted close, idiosyncratic conditional vol, log volume (shares), each [days, N], and the
    draws the bars are shaped from, [5, days, N]; every day's draws from its own generator."""
    n, n_sec, n_con, n_days = len(s.sector), len(SECTORS), len(CONCEPTS), len(days)
    vols = np.concatenate([
        [FACTOR_VOLS["market"]],
        np.full(n_sec, FACTOR_VOLS["sector"]),
        np.full(n_con, FACTOR_VOLS["concept"]),
        s.idio_vol,
    ])
    omega = vols**2 * (1 - GARCH_ALPHA - GARCH_BETA)
    var = vols**2
    t_scale = 1 / np.sqrt(T_DF / (T_DF - 2))
    # Each instrument's 1-3 concepts as three (index, beta) columns, so a day's concept term is
    # elementwise (a matrix product's summation order could depend on how many days are stacked).
    order = np.argsort(~s.concepts, axis=1, kind="stable")[:, :3]
    con_idx = order.T
    con_beta = np.take_along_axis(s.beta_concepts, order, axis=1).T  # zero where fewer than 3 concepts

    total_vol = np.sqrt(
        (s.beta_market * FACTOR_VOLS["market"]) ** 2
        + (s.beta_sector * FACTOR_VOLS["sector"]) ** 2
        + (s.beta_concepts**2).sum(axis=1) * FACTOR_VOLS["concept"] ** 2
        + s.idio_vol**2
    )
    # Unit-variance signals -> expected-return coefficients (see K_* above).
    volume_sd = np.sqrt((VOLUME_ON_MOVE**2 * (1 - ABS_SHOCK_MEAN**2) + VOLUME_NOISE**2) / (1 - VOLUME_AR**2))
    c_reversal = -strength * K_REVERSAL / np.sqrt(REVERSAL_DAYS)
    c_momentum = strength * K_MOMENTUM / np.sqrt(MOMENTUM_FROM - MOMENTUM_TO)
    c_volume = strength * K_VOLUME * s.idio_vol / volume_sd
    first_planted = MOMENTUM_FROM + 2

    log_close = np.zeros((n_days, n))
    cond_vol = np.empty((n_days, n))
    abnormal_volume = np.zeros((n_days, n))
    draws = np.empty((5, n_days, n))
    close, volume = np.zeros(n), np.zeros(n)
    for t in range(n_days):
        rng = _day_generator(key, days[t], STREAM_DAILY)
        z = rng.standard_t(T_DF, size=len(vols)) * t_scale
        volume_shock = VOLUME_NOISE * rng.standard_normal(n) - VOLUME_ON_MOVE * ABS_SHOCK_MEAN
        draws[:2, t] = rng.random((2, n))
        draws[2:, t] = rng.standard_normal((3, n))
        sd = np.sqrt(var)
        shocks = sd * z
        var = omega + GARCH_ALPHA * shocks**2 + GARCH_BETA * var
        cond_vol[t] = sd[1 + n_sec + n_con :]
        concept = shocks[1 + n_sec : 1 + n_sec + n_con]
        ret = (
            MARKET_DRIFT
            + shocks[0] * s.beta_market
            + shocks[1 + s.sector] * s.beta_sector
            + concept[con_idx[0]] * con_beta[0] + concept[con_idx[1]] * con_beta[1] + concept[con_idx[2]] * con_beta[2]
            + shocks[1 + n_sec + n_con :]
        )
        if t >= first_planted:
            known = t - 2  # the return of day t is the label of day t-2
            alpha = (
                c_reversal * (log_close[known] - log_close[known - REVERSAL_DAYS])
                + c_momentum * (log_close[known - MOMENTUM_TO] - log_close[known - MOMENTUM_FROM])
                + c_volume * abnormal_volume[known]
            )
            ret += alpha - np.add.reduce(alpha) / n  # the effects are cross-sectional
        close = close + ret
        volume = VOLUME_AR * volume + VOLUME_ON_MOVE * np.minimum(np.abs(ret) / total_vol, MOVE_CAP) + volume_shock
        log_close[t], abnormal_volume[t] = close, volume
    mean_shares = np.log(TURNOVER * s.listing_cap / s.listing_price)
    return log_close, cond_vol, mean_shares + abnormal_volume, draws


def _bars(
    draws: np.ndarray, log_close: np.ndarray, prev_close: np.ndarray, vol: np.ndarray
) -> dict[str, np.ndarray]:
    """Adjusted OHLC and vwap around a close path: low <= open, close <= high and vwap in [low, high].

    ``draws`` holds per [day, instrument] two uniforms, the open's place in the day's move and the
    vwap's weight between the open/close and high/low midpoints, and three standard normals, for
    the open's noise and the high and low wicks.
    """
    position, weight, open_noise, high_noise, low_noise = draws
    ret = log_close - prev_close
    log_open = prev_close + position * ret + 0.2 * vol * open_noise
    log_high = np.maximum(log_open, log_close) + 0.5 * vol * np.abs(high_noise)
    log_low = np.minimum(log_open, log_close) - 0.5 * vol * np.abs(low_noise)
    open_, high, low, close = (np.exp(x) for x in (log_open, log_high, log_low, log_close))
    vwap = np.clip(weight * (open_ + close) / 2 + (1 - weight) * (high + low) / 2, low, high)
    return {"open": open_, "high": high, "low": low, "close": close, "vwap": vwap}


def _split_ratios(day: np.ndarray, who: np.ndarray, ratio: np.ndarray, n_days: int, n: int) -> np.ndarray:
    """Cumulative split ratio per [day, instrument]: 2 or 3 from the split session on, else 1."""
    out = np.ones((n_days, n))
    for d, i, r in zip(day, who, ratio):
        out[d:, i] *= r  # a split after ``end`` (d == n_days) changes nothing yet
    return out


def _suspensions(day: np.ndarray, who: np.ndarray, length: np.ndarray, n_days: int, n: int) -> np.ndarray:
    """Boolean [day, instrument] mask of runs of 1-4 suspended sessions strictly inside listed spans."""
    mask = np.zeros((n_days, n), dtype=bool)
    for offset in range(length.max(initial=0)):
        hit = (offset < length) & (day + offset < n_days)  # a run may go on after ``end``
        mask[day[hit] + offset, who[hit]] = True
    return mask


def _index_membership(cap: np.ndarray, listed: np.ndarray, dates: np.ndarray, size: int) -> np.ndarray:
    """Top ``size`` listed instruments by cap, rebalanced quarterly; a delisted member is replaced at once."""
    quarter = dates.astype("datetime64[M]").astype(np.int64) // 3
    rebalance = np.r_[True, quarter[1:] != quarter[:-1]]
    members = np.zeros(listed.shape[1], dtype=bool)
    out = np.empty_like(listed)
    for t in range(len(dates)):
        if rebalance[t]:
            members = np.zeros_like(members)
        members &= listed[t]
        missing = size - members.sum()
        if missing > 0:
            candidates = np.flatnonzero(listed[t] & ~members)
            members[candidates[np.argsort(-cap[t, candidates], kind="stable")[:missing]]] = True
        out[t] = members
    return out


def _spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True in each column of a [day, instrument] mask: (instrument, first row, last row)."""
    edges = np.diff(np.pad(mask, ((1, 1), (0, 0))).astype(np.int8), axis=0).T
    inst, start = np.nonzero(edges == 1)
    _, stop = np.nonzero(edges == -1)
    return inst, start, stop - 1


def _universe(
    names: np.ndarray, dates: np.ndarray, listed: np.ndarray, members: np.ndarray, index: str
) -> pd.DataFrame:
    """Membership spans: market "all" is each listing, ``index`` the index's entries and exits."""
    frames = []
    for market, mask in (("all", listed), (index, members)):
        inst, start, end = _spans(mask)
        frames.append(pd.DataFrame(
            {"market": market, "instrument": names[inst], "start_date": dates[start], "end_date": dates[end]}
        ))
    return pd.concat(frames, ignore_index=True)


def _concept_frame(names: np.ndarray, s: _Structure) -> pd.DataFrame:
    inst, concept = np.nonzero(s.concepts)
    sectors = pd.DataFrame(
        {"instrument": names, "concept": np.array(SECTORS, dtype=object)[s.sector], "kind": "sector"}
    )
    themes = pd.DataFrame(
        {"instrument": names[inst], "concept": np.array(CONCEPTS, dtype=object)[concept], "kind": "concept"}
    )
    frame = pd.concat([sectors, themes], ignore_index=True)
    return frame.sort_values(["instrument", "kind"], ascending=[True, False], kind="stable", ignore_index=True)
