"""Deterministic synthetic market: the embedded default source when no real data is configured.

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
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qpipe.calendar import trading_days

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

MIN_DAYS = 80  # listings last at least a quarter of the range; that must span a few weeks
BURN_IN = 80  # simulated days before the calendar starts, so windows and GARCH are warm on day 0
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
TURNOVER = 0.005  # mean daily volume as a share of market cap


@dataclass(frozen=True)
class SyntheticSpec:
    n_instruments: int = 300
    start: str = "2015-01-02"
    end: str = "2024-12-31"
    seed: int = 7
    index_size: int = 200  # members of the synthetic index at any time
    late_listing_share: float = 0.15  # instruments that list after ``start``
    delisting_share: float = 0.08  # instruments that delist before ``end``
    n_splits: int = 12
    suspension_rate: float = 0.003  # share of listed rows that are suspended
    signal_strength: float = 1.0  # scales the planted effects; 0 gives a market with nothing to learn

    def __post_init__(self) -> None:
        always_listed = self.n_instruments * (1 - self.late_listing_share - self.delisting_share)
        if not 0 < self.index_size <= always_listed:
            raise ValueError(
                f"index_size {self.index_size} must be in (0, {always_listed:.0f}]: the instruments "
                "listed over the whole range must be able to fill the index"
            )

    @property
    def index_name(self) -> str:
        return f"syn{self.index_size}"


@dataclass(frozen=True)
class SyntheticMarket:
    prices: pd.DataFrame  # canonical long frame, sorted by (date, instrument)
    universe: pd.DataFrame  # market, instrument, start_date, end_date (membership spans)
    concepts: pd.DataFrame  # instrument, concept, kind ("sector" | "concept")


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


def generate_market(spec: SyntheticSpec = SyntheticSpec()) -> SyntheticMarket:
    dates = trading_days(spec.start, spec.end).astype("datetime64[ns]")
    n_days, n = len(dates), spec.n_instruments
    if n_days < MIN_DAYS:
        raise ValueError(f"{spec.start}..{spec.end} has {n_days} trading days; at least {MIN_DAYS} are needed")
    rng_spans, rng_structure, rng_shocks, rng_bars, rng_events = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(5)
    )
    first, last = _listing_spans(rng_spans, n, n_days, spec)
    structure = _draw_structure(rng_structure, n)
    log_close, cond_vol, log_shares = _simulate(rng_shocks, structure, n_days + BURN_IN, spec.signal_strength)
    base = log_close[BURN_IN + first, np.arange(n)]  # the adjusted close is 1.0 on the listing day
    prev_close = log_close[BURN_IN - 1 : -1] - base
    log_close, cond_vol, log_shares = log_close[BURN_IN:] - base, cond_vol[BURN_IN:], log_shares[BURN_IN:]

    day = np.arange(n_days)[:, None]
    listed = (day >= first) & (day <= last)
    bars = _bars(rng_bars, log_close, prev_close, cond_vol)
    members = _index_membership(structure.listing_cap * bars["close"], listed, dates, spec.index_size)
    split_ratio = _split_ratios(rng_events, first, last, n_days, spec.n_splits)
    factor = split_ratio / structure.listing_price
    raw_volume = np.maximum(np.rint(np.exp(log_shares) * split_ratio), 1.0)
    bars["volume"] = raw_volume / factor
    suspended = _suspensions(rng_events, first, last, n_days, spec.suspension_rate)
    for name in PRICE_COLUMNS:
        bars[name][suspended] = np.nan

    names = np.array([f"SYN{i + 1:04d}" for i in range(n)], dtype=object)
    # Boolean indexing of [day, instrument] arrays yields rows in (date, instrument) order.
    prices = pd.DataFrame(
        {
            "date": np.broadcast_to(dates[:, None], listed.shape)[listed],
            "instrument": np.broadcast_to(names, listed.shape)[listed],
        }
        | {name: bars[name][listed] for name in PRICE_COLUMNS}
        | {"factor": factor[listed]}
    )
    universe = _universe(names, dates, listed, members, spec.index_name)
    return SyntheticMarket(prices=prices, universe=universe, concepts=_concept_frame(names, structure))


def _listing_spans(
    rng: np.random.Generator, n: int, n_days: int, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray]:
    """First and last listed row per instrument; late listers IPO in the first half of the range."""
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, n_days - 1, dtype=np.int64)
    late = rng.choice(n, size=round(spec.late_listing_share * n), replace=False)
    first[late] = rng.integers(1, n_days // 2, size=len(late))
    gone = rng.choice(n, size=round(spec.delisting_share * n), replace=False)
    last[gone] = first[gone] + n_days // 4 + rng.integers(0, n_days - 1 - n_days // 4 - first[gone])
    return first, last


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


def _garch_shocks(rng: np.random.Generator, vols: np.ndarray, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Student-t shocks with GARCH(1,1) variance around ``vols``; returns (shocks, conditional vol)."""
    z = rng.standard_t(T_DF, size=(n_days, len(vols))) / np.sqrt(T_DF / (T_DF - 2))
    omega = vols**2 * (1 - GARCH_ALPHA - GARCH_BETA)
    var = vols**2
    shocks = np.empty_like(z)
    cond_vol = np.empty_like(z)
    for t in range(n_days):
        cond_vol[t] = np.sqrt(var)
        shocks[t] = cond_vol[t] * z[t]
        var = omega + GARCH_ALPHA * shocks[t] ** 2 + GARCH_BETA * var
    return shocks, cond_vol


def _simulate(
    rng: np.random.Generator, s: _Structure, n_days: int, strength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log adjusted close, idiosyncratic conditional vol and log volume (shares), each [days, N]."""
    n, n_sec, n_con = len(s.sector), len(SECTORS), len(CONCEPTS)
    vols = np.concatenate([
        [FACTOR_VOLS["market"]],
        np.full(n_sec, FACTOR_VOLS["sector"]),
        np.full(n_con, FACTOR_VOLS["concept"]),
        s.idio_vol,
    ])
    shocks, cond_vol = _garch_shocks(rng, vols, n_days)
    market, sector, concept, idio = np.split(shocks, np.cumsum([1, n_sec, n_con]), axis=1)
    innovation = (
        MARKET_DRIFT
        + market * s.beta_market
        + sector[:, s.sector] * s.beta_sector
        + concept @ s.beta_concepts.T
        + idio
    )

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

    # Log volume: AR(1) around the instrument's level, pushed up by large moves.
    volume_shock = VOLUME_NOISE * rng.standard_normal((n_days, n)) - VOLUME_ON_MOVE * ABS_SHOCK_MEAN
    move_to_volume = VOLUME_ON_MOVE / total_vol
    first_planted = MOMENTUM_FROM + 2
    log_close = np.zeros((n_days, n))
    log_close[:first_planted] = np.cumsum(innovation[:first_planted], axis=0)
    abnormal_volume = np.zeros((n_days, n))
    for t in range(first_planted, n_days):
        known = t - 2  # the return of day t is the label of day t-2
        alpha = (
            c_reversal * (log_close[known] - log_close[known - REVERSAL_DAYS])
            + c_momentum * (log_close[known - MOMENTUM_TO] - log_close[known - MOMENTUM_FROM])
            + c_volume * abnormal_volume[known]
        )
        ret = alpha - np.add.reduce(alpha) / n + innovation[t]  # the effects are cross-sectional
        log_close[t] = log_close[t - 1] + ret
        abnormal_volume[t] = VOLUME_AR * abnormal_volume[t - 1] + move_to_volume * np.abs(ret) + volume_shock[t]
    mean_shares = np.log(TURNOVER * s.listing_cap / s.listing_price)
    return log_close, cond_vol[:, 1 + n_sec + n_con :], mean_shares + abnormal_volume


def _bars(
    rng: np.random.Generator, log_close: np.ndarray, prev_close: np.ndarray, vol: np.ndarray
) -> dict[str, np.ndarray]:
    """Adjusted OHLC and vwap around a close path: low <= open, close <= high and vwap in [low, high]."""
    shape = log_close.shape
    ret = log_close - prev_close
    log_open = prev_close + rng.random(shape) * ret + 0.2 * vol * rng.standard_normal(shape)
    log_high = np.maximum(log_open, log_close) + 0.5 * vol * np.abs(rng.standard_normal(shape))
    log_low = np.minimum(log_open, log_close) - 0.5 * vol * np.abs(rng.standard_normal(shape))
    open_, high, low, close = (np.exp(x) for x in (log_open, log_high, log_low, log_close))
    weight = rng.random(shape)
    vwap = np.clip(weight * (open_ + close) / 2 + (1 - weight) * (high + low) / 2, low, high)
    return {"open": open_, "high": high, "low": low, "close": close, "vwap": vwap}


def _split_ratios(
    rng: np.random.Generator, first: np.ndarray, last: np.ndarray, n_days: int, n_splits: int
) -> np.ndarray:
    """Cumulative split ratio per [day, instrument]: 2 or 3 from a split day on, else 1."""
    ratio = np.ones((n_days, len(first)))
    split = rng.choice(len(first), size=min(n_splits, len(first)), replace=False)
    day = first[split] + 1 + rng.integers(0, last[split] - first[split])
    for i, d, r in zip(split, day, rng.choice([2.0, 3.0], size=len(split), p=[0.75, 0.25])):
        ratio[d:, i] = r
    return ratio


def _suspensions(
    rng: np.random.Generator, first: np.ndarray, last: np.ndarray, n_days: int, rate: float
) -> np.ndarray:
    """Boolean [day, instrument] mask of runs of 1-4 suspended days strictly inside listed spans."""
    span = last - first + 1
    lengths = rng.integers(1, 5, size=round(rate * span.sum() / 2.5))
    who = rng.choice(len(first), size=len(lengths), p=span / span.sum())
    start = first[who] + 1 + (rng.random(len(lengths)) * (span[who] - lengths - 1)).astype(np.int64)
    mask = np.zeros((n_days, len(first)), dtype=bool)
    for offset in range(lengths.max(initial=0)):
        hit = offset < lengths
        mask[start[hit] + offset, who[hit]] = True
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
