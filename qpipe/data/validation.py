"""Rules every price row must satisfy before anything is written, with errors that say where.

A canonical price frame has the columns of ``PRICE_COLUMNS``: ``date`` (datetime64), ``instrument``
(str) and float64 adjusted ``open high low close vwap volume factor``. A suspended day is a row
whose price and volume fields are all NaN (Qlib's bins carry such rows inside a listing span).
"""

import numpy as np
import pandas as pd

PRICE_COLUMNS = ("date", "instrument", "open", "high", "low", "close", "vwap", "volume", "factor")
OHLC = ("open", "high", "low", "close")
CELLS_A_PRICE_ROW = 64  # numbers a frame of prices holds a row while read and checked (measured: ~600 bytes)
MAX_VOLUME = 1e15  # shares in a day: no exchange has traded near that; more is a unit or parsing error
MAX_PRICE = 1e8  # a traded price (the file's, or price / factor): no share has traded near it; more is an error
# a source's last day missing more than this share (and more than PARTIAL_MIN) of the instruments the session before had
# rows for is a day it has not finished: real markets lose one or two a day (sp500_5yr: 1 at most)
PARTIAL_SHARE, PARTIAL_MIN = 0.05, 5
OHLC_TOLERANCE = 1e-6  # relative: float32 adjusted prices (Qlib's bins) round open/high/low/close apart


class PriceDataError(ValueError):
    """Bad input: names the source (file), the instrument, the date and the rule broken."""

    def __init__(self, rule: str, source: str, *, instrument: str | None = None, date=None,
                 detail: str = "", count: int = 1) -> None:
        where = [f"source {source}"]
        if instrument is not None:
            where.append(f"instrument {instrument}")
        if date is not None:
            where.append(f"date {pd.Timestamp(date).date()}")
        more = f" ({count} rows break this rule; the first is shown)" if count > 1 else ""
        super().__init__(f"{rule}: {', '.join(where)}{': ' + detail if detail else ''}{more}. Nothing was written.")
        self.rule, self.source, self.instrument, self.date = rule, source, instrument, date


def first_few(items, most: int = 10) -> str:
    """Days or names for a message: the first ``most``, and how many more."""
    return ", ".join(str(d) for d in items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def counted(items, noun: str) -> str:
    """``items`` for a message, with how many when there are several: '2 days, 2024-06-02, 2024-06-09'."""
    return first_few(items) if len(items) == 1 else f"{len(items)} {noun}, {first_few(items)}"


def check_sessions(dates: pd.Series, sessions: np.ndarray, source: str, calendar: str, matched: str = "") -> None:
    """Every date of the rows is a session of the calendar, and every session has rows; else name the days.

    ``matched``: the calendar is the source's own dates (QPIPE_CALENDAR=auto) on the weekdays of this exchange."""
    present = np.unique(dates.to_numpy().astype("datetime64[D]"))
    foreign, absent = np.setdiff1d(present, sessions), np.setdiff1d(sessions, present)
    weekday = (present.view("int64") + 3) % 7  # Monday = 0
    sundays = int(np.sum(np.isin(present, foreign) & (weekday == 6)))
    shifted = 2 * sundays > len(foreign) and not np.any(weekday == 4)  # Sunday to Thursday: a week a day early
    early = (f"; {sundays} of them Sundays and no Friday: bars of a market east of the zone they were dated in "
             "(Tokyo's dated in UTC) fall a day early, date each bar by the exchange's own day" if shifted else "")
    if matched:  # QPIPE_CALENDAR=auto
        foreign_hint = (f"QPIPE_CALENDAR is auto: the source's own dates, on the days of the week {matched} trades; "
                        f"remove those rows, or set QPIPE_CALENDAR to an exchange that trades on them{early}")
        absent_hint = ("QPIPE_CALENDAR is auto: these are days of the source's calendar it has no prices for "
                       "(not appended yet, or bins shorter than day.txt)")
    else:
        foreign_hint = f"set QPIPE_CALENDAR to the source's exchange, or auto to use the source's own dates{early}"
        absent_hint = ("days the source has no row for; if the exchange was closed on them (a typhoon, a closure "
                       "exchange-calendars does not know), QPIPE_CALENDAR=auto takes the source's own dates and names "
                       "such days in the ingest's log; else set QPIPE_CALENDAR to the source's exchange")
    for days, rule, what, hint in (
            (foreign, "dates that are not sessions", f"not sessions of {calendar}", foreign_hint),
            (absent, "sessions missing from the source", f"sessions of {calendar} with no row for any instrument",
             absent_hint)):
        if len(days):
            raise PriceDataError(rule, source, detail=f"{counted(days, 'days')} ({what}); {hint}")


def check_whole_day(day, names: set[str], before: set[str], source: str) -> None:
    """The source's last day (``names``: its instruments) has a row for all but a few of the instruments the session
    before had rows for (``before``); else the source has not finished it (a vendor file read mid-update)."""
    missing = sorted(before - names)
    if len(missing) > max(PARTIAL_MIN, PARTIAL_SHARE * len(before)):
        raise PriceDataError(
            "partial day", source, date=day,
            detail=f"rows for {len(names)} instruments and none for {len(missing)} of the {len(before)} the session "
                   f"before had ({first_few(missing)}): the source looks unfinished for its last day. Run again when "
                   "it is complete; if those stocks did leave (or the source leaves suspended stocks out), set "
                   "allow_missing: true in raw/prices' config")


def _shown(row: pd.Series, col: str) -> str:
    """A value as the file has it; the adjusted value too where the source adjusted it."""
    raw = row.get(f"raw_{col}")
    if raw is None or pd.isna(raw) or np.isclose(raw, row[col], rtol=1e-12):
        return f"{col}={row[col]:g}"
    return f"{col}={raw:g} in the file ({row[col]:g} adjusted)"


def _first_bad(frame: pd.DataFrame, bad: np.ndarray, rule: str, source: str, detail_of) -> None:
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    row = frame.iloc[i]
    origin = row["_file"] if "_file" in frame.columns else source
    raise PriceDataError(rule, str(origin), instrument=row["instrument"], date=row["date"],
                         detail=detail_of(row), count=int(bad.sum()))


def _where_else(frame: pd.DataFrame, row: pd.Series) -> str:
    """A duplicate row, and the files it is in where there are several (a file downloaded twice, 'AAPL (1).csv')."""
    if "_file" not in frame.columns:
        return "the row appears more than once"
    files = frame.loc[(frame["date"] == row["date"]) & (frame["instrument"] == row["instrument"]), "_file"]
    names = sorted({str(f) for f in files})
    return "the row appears more than once" + (f", in {' and '.join(names)}" if len(names) > 1 else "")


UNIVERSE_COLUMNS = ["market", "instrument", "start_date", "end_date"]
CONCEPT_COLUMNS = ["instrument", "concept", "kind"]


def listing_spans(prices: pd.DataFrame, market: str = "all") -> pd.DataFrame:
    """The ``all`` market: each instrument from its first to its last row."""
    spans = prices.groupby("instrument", sort=True)["date"].agg(start_date="min", end_date="max").reset_index()
    spans.insert(0, "market", market)
    return spans[UNIVERSE_COLUMNS]


def no_concepts() -> pd.DataFrame:
    """The concept memberships of a source that has none (only the embedded market has sectors and concepts)."""
    return pd.DataFrame({c: pd.Series(dtype=str) for c in CONCEPT_COLUMNS})


def empty_prices() -> pd.DataFrame:
    """A canonical frame without rows: what a source holds for days it has no rows on."""
    return pd.DataFrame({c: pd.Series(dtype="datetime64[ns]" if c == "date" else object if c == "instrument"
                                      else np.float64) for c in PRICE_COLUMNS})


def validate_prices(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a canonical frame; return it sorted by (date, instrument) without helper columns."""
    if len(frame) == 0:
        raise PriceDataError("empty source", source, detail="no price rows were found")
    missing = [c for c in PRICE_COLUMNS if c not in frame.columns]
    if missing:
        raise PriceDataError("missing columns", source, detail=f"{missing} (found {list(frame.columns)})")

    dup = frame.duplicated(["date", "instrument"], keep="first").to_numpy()
    _first_bad(frame, dup, "duplicate (instrument, date) row", source, lambda row: _where_else(frame, row))

    # The file's own prices: an empty close makes a factor derived from it (adj close / close) empty, and with it
    # every adjusted price, which would pass for a suspended day.
    has_price = frame[[f"raw_{c}" if f"raw_{c}" in frame else c for c in OHLC]].notna().to_numpy()
    partial = has_price.any(axis=1) & ~has_price.all(axis=1)
    # A row with prices needs its factor (checked first: a source that adjusts leaves such a row without prices).
    _first_bad(frame, has_price.all(axis=1) & frame["factor"].isna().to_numpy(), "missing factor", source,
               lambda r: "the row has prices but its factor (or adj close) is empty")
    _first_bad(frame, partial, "incomplete price row", source,
               lambda r: "some of open/high/low/close are missing; a suspended day leaves all of them empty")
    with np.errstate(invalid="ignore"):
        # The file's own prices first: a factor derived from them (adj close / close) inherits their sign.
        for col in (*OHLC, "vwap"):
            if f"raw_{col}" in frame:
                raw = frame[f"raw_{col}"].to_numpy(dtype=np.float64)
                _first_bad(frame, raw <= 0, f"non-positive {col}", source, lambda r, c=col: _shown(r, c))
        # Then the factor: a zero factor makes every adjusted price zero, and the factor is the cause.
        for col in ("factor", *OHLC, "vwap"):
            values = frame[col].to_numpy(dtype=np.float64)
            _first_bad(frame, np.isinf(values), f"infinite {col}", source, lambda r, c=col: _shown(r, c))
            _first_bad(frame, values <= 0, f"non-positive {col}", source, lambda r, c=col: _shown(r, c))
        for col in (*OHLC, "vwap"):  # the traded price: the file's own, else the adjusted one / factor
            traded = (frame[f"raw_{col}"] if f"raw_{col}" in frame else frame[col] / frame["factor"]).to_numpy(float)
            _first_bad(frame, traded > MAX_PRICE, f"implausible {col}", source,
                       lambda r, c=col: f"{_shown(r, c)}: a traded price above {MAX_PRICE:.0e}")
        volume = frame["volume"].to_numpy(dtype=np.float64)
        _first_bad(frame, (volume < 0) | np.isinf(volume), "negative or infinite volume", source,
                   lambda r: _shown(r, "volume"))
        _first_bad(frame, volume > MAX_VOLUME, "implausible volume", source,
                   lambda r: f"{_shown(r, 'volume')}: more than {MAX_VOLUME:.0e} shares in a day")
        open_, high, low, close = (frame[col].to_numpy(dtype=np.float64) for col in OHLC)
        _first_bad(frame, high < low, "high < low", source, lambda r: f"{_shown(r, 'high')} {_shown(r, 'low')}")
        slack = 1 + OHLC_TOLERANCE
        for col, values in (("open", open_), ("close", close)):
            _first_bad(frame, values > high * slack, f"{col} > high", source,
                       lambda r, col=col: f"{_shown(r, col)} {_shown(r, 'high')}: the high is the day's highest price")
            _first_bad(frame, values < low / slack, f"{col} < low", source,
                       lambda r, col=col: f"{_shown(r, col)} {_shown(r, 'low')}: the low is the day's lowest price")

    out = frame.drop(columns=[c for c in frame.columns if c not in PRICE_COLUMNS])
    return out.sort_values(["date", "instrument"], kind="stable").reset_index(drop=True)
