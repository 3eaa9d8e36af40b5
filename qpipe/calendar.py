"""The market's trading calendar: its sessions, its time zone and its close, one for the whole project.

Partitions, the after-close schedule, the "future day" check, retrain cadences and the embedded
market all read this one calendar. ``QPIPE_CALENDAR`` chooses it:

- an exchange code (``XNYS``, ``XSHG``, ``XSHE``, ``XHKG``, ``XTKS``, ``XLON``, ...): the sessions,
  time zone and close of exchange-calendars;
- ``auto`` (the default): the source's own. The embedded market trades on XNYS; a Qlib provider
  directory's calendar is its ``calendars/day.txt`` and a CSV/Parquet source's the dates in its
  files, with the time zone and close of the exchange whose sessions they match best.

A calendar knows its sessions up to ``last_known``: an exchange's published holidays; for a source's
own dates, the last line of ``day.txt`` or the last date in its files, followed by the sessions of the
exchange they match, where they match it closely (so a holiday after the source's last date is no
partition and the schedule skips it). After that, the weekdays on which it trades count as sessions,
so a day a provider appends to ``day.txt`` tomorrow is a partition today, with no code change.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from qpipe.settings import get_settings

EARLIEST = "2000-01-03"
DEFAULT_EXCHANGE = "XNYS"
# Exchanges whose sessions a data calendar is matched against for its time zone and close.
CANDIDATES = ("XNYS", "XSHG", "XHKG", "XTKS", "XLON", "XTSE", "XASX", "XETR", "XPAR", "XKRX", "XTAI", "XBOM")
ONE_DAY = np.timedelta64(1, "D")
# By how many days a source's recent dates (~2 years) may differ from an exchange's sessions and still be its: 5,
# or, where that exchange is clearly the nearest (the next is twice as far), 3% of them: a vendor's missed days, its
# holiday rows and the closures exchange-calendars does not know (Hong Kong's typhoons) add up to more than 5 (found
# in review), while neighbours differ by as few as 1 (Paris and Frankfurt) or 7 (London) days in 500 sessions.
CLOSE_MATCH, CLOSE_MATCH_SHARE = 5, 0.03
HORIZON_WARNING_DAYS = 60  # warn this long before an exchange's known sessions end
SCHEDULE_DELAY = timedelta(minutes=90)  # the daily run starts this long after the close (bars are published by then)


@dataclass(frozen=True, eq=False)
class MarketCalendar:
    name: str  # "XNYS", or where a data calendar came from, e.g. "day.txt of /data/cn (XSHG hours)"
    key: str  # what a warehouse remembers: the exchange code, or "tabular dates (XNYS hours)" / "qlib day.txt (...)"
    sessions: np.ndarray  # datetime64[D], ascending: the exchange's sessions, or the dates of a source
    timezone: str
    close: time  # the local closing time of a regular session
    matched: str = ""  # a calendar of a source's own dates: the exchange whose hours (and sessions) it matched
    upcoming: np.ndarray | None = None  # such a calendar: the matched exchange's sessions after the source's last date
    apart: int = 0  # such a calendar: on how many of its last ~500 dates it differs from the matched exchange
    early: Mapping[date, time] = field(default_factory=dict)  # the closes of the half days (Christmas Eve ...)

    @cached_property
    def known(self) -> np.ndarray:
        """Every session known: ``sessions`` and then the ``upcoming`` ones."""
        return self.sessions if self.upcoming is None else np.concatenate([self.sessions, self.upcoming])

    @property
    def last_known(self) -> np.datetime64:
        return self.known[-1]

    @property
    def weekdays(self) -> tuple[int, ...]:
        """Days of the week (Monday = 0) on which the market trades."""
        return tuple(sorted({int(d) for d in (self.sessions.astype("datetime64[D]").view("int64") + 3) % 7}))

    def trading_days(self, start, end) -> np.ndarray:
        """Sessions in [start, end] as datetime64[D]; after ``last_known``, every trading weekday."""
        lo, hi = _day(start), _day(end)
        known = self.known[(self.known >= lo) & (self.known <= hi)]
        if hi <= self.last_known:
            return known
        after = np.arange(max(lo, self.last_known + ONE_DAY), hi + ONE_DAY, dtype="datetime64[D]")
        return np.concatenate([known, after[np.isin((after.view("int64") + 3) % 7, self.weekdays)]])

    def is_session(self, day) -> bool:
        d = _day(day)
        return len(self.trading_days(d, d)) == 1

    def closed_weekdays(self, start, end=None) -> list[date]:
        """Trading weekdays in [start, min(end, last_known)] that are not sessions (holidays, closures)."""
        hi = min(_day(end), self.last_known) if end is not None else self.last_known
        days = np.arange(_day(start), hi + ONE_DAY, dtype="datetime64[D]")
        closed = days[np.isin((days.view("int64") + 3) % 7, self.weekdays) & ~np.isin(days, self.known)]
        return [d.item() for d in closed]

    def now(self) -> datetime:
        """The time where the market is."""
        return datetime.now(ZoneInfo(self.timezone))

    def today(self) -> date:
        """Today's date where the market is."""
        return self.now().date()

    def close_on(self, day: date) -> time:
        """The close of ``day``: a half day's early one, else the regular close."""
        return self.early.get(day, self.close)

    def not_over(self, day: date) -> str:
        """Why the session of ``day`` cannot be ingested yet, or '' once its close has passed: a vendor's bar of a day
        still trading (yfinance gives one) is the day so far, and features, labels and scores would be made of it."""
        now = self.now()
        if day > now.date():
            return f"{day} is in the future ({self.timezone})"
        close = self.close_on(day)
        if day == now.date() and now.time() < close and self.is_session(day):
            left = int((datetime.combine(day, close, now.tzinfo) - now).total_seconds()) // 60
            return (f"{day} is a session not over yet: {self.name} closes at {close:%H:%M} ({self.timezone}), "
                    f"in {left // 60} h {left % 60:02d} min")
        return ""

    def last_closed_session(self) -> date:
        """The latest session whose close has passed: the last day there are final bars of."""
        now = self.now()
        return self.latest_session(now.date() - timedelta(days=int(now.time() < self.close_on(now.date()))))

    def horizon_warning(self, today: date | None = None) -> str:
        """What to say when the exchange's known sessions end within HORIZON_WARNING_DAYS: exchange-calendars
        publishes some exchanges' holidays a year at a time (XSHG's to 2026-12-31 in 4.13), and after the last one
        known every weekday is a session, holidays too (the schedule's run then waits hours for rows that never
        come)."""
        if self.matched and self.upcoming is None:  # a source's own dates, near no exchange's: they end where it does
            return (f"the {self.name.removesuffix(f' ({self.matched} hours)')} are no exchange's sessions: the "
                    f"nearest, {self.matched}'s, differ from its last {min(len(self.sessions), 500)} by {self.apart} "
                    f"days, so after {self.sessions[-1]} every weekday counts as a session, holidays too. If they are "
                    f"{self.matched}'s, set QPIPE_CALENDAR={self.matched}; else mind the holidays after it")
        left = (self.last_known - np.datetime64(today or self.today(), "D")).astype(int)
        if left > HORIZON_WARNING_DAYS:
            return ""
        from importlib.metadata import version

        return (f"{self.matched or self.name}'s sessions are known to {self.last_known} (exchange-calendars "
                f"{version('exchange-calendars')}): after it every weekday counts as a session, holidays too. Upgrade "
                "exchange-calendars (pip install -U exchange-calendars) before then")

    def latest_session(self, on_or_before=None) -> date:
        day = _day(on_or_before if on_or_before is not None else self.today())
        days = self.trading_days(day - 14 * ONE_DAY, day)
        return days[-1].item()

    def schedule_cron(self, after_close: timedelta = SCHEDULE_DELAY) -> str:
        """Cron of the daily run: ``after_close`` after the close, in the market's time zone, on its weekdays."""
        at = datetime.combine(date(2000, 1, 3), self.close) + after_close
        cron_days = ",".join(str((d + 1) % 7) for d in self.weekdays)  # cron counts Sunday as 0
        return f"{at.minute} {at.hour} * * {'1-5' if self.weekdays == (0, 1, 2, 3, 4) else cron_days}"

    def departures(self, start, end) -> tuple[np.ndarray, np.ndarray]:
        """For a calendar of a source's own dates, how they depart in [start, end] from the exchange they match:
        (1) its sessions within this calendar's span that the source lacks, days with no row in any of its files (no
        partitions, so features and labels read across them), from the day after this calendar's session before
        ``start`` on (a daily run of the day after such a gap reads across it); (2) the source's dates that exchange
        does not trade, where they match it closely: a row on a holiday (a vendor's placeholder), a partition of a day
        the market was closed. Built when asked, by the ingest, with one build of the exchange's calendar: not in
        every process that loads the calendar."""
        none = self.sessions[:0]
        lo, hi = _day(start), _day(end)
        if not self.matched or hi < lo:
            return none, none
        before = self.sessions[self.sessions < lo]
        inside_lo = max(before[-1] + 1 if len(before) else lo, self.sessions[0])
        inside_hi = min(hi, self.sessions[-1])
        exchange = exchange_calendar(self.matched, str(max(min(lo, inside_lo), np.datetime64(EARLIEST, "D"))))
        lacking = (np.setdiff1d(exchange.trading_days(inside_lo, min(inside_hi, exchange.last_known)), self.sessions)
                   if inside_lo <= inside_hi else none)
        if self.upcoming is None:  # not close to any exchange's sessions: every day of it would be named
            return lacking, none
        ours = self.sessions[(self.sessions >= lo) & (self.sessions <= min(hi, exchange.last_known))]
        return lacking, np.setdiff1d(ours, exchange.trading_days(lo, hi))

    def describe(self) -> str:
        return (f"{self.name}: {self.timezone}, close {self.close:%H:%M}, {len(self.sessions)} sessions "
                f"{self.sessions[0]}..{self.sessions[-1]}" + ("" if self.upcoming is None else
                                                              f", then {self.matched}'s to {self.last_known}"))


def _day(value) -> np.datetime64:
    return np.datetime64(pd.Timestamp(value).date(), "D")


@lru_cache(maxsize=16)
def exchange_calendar(code: str, start: str = EARLIEST) -> MarketCalendar:
    import exchange_calendars as xcals

    try:
        calendar = xcals.get_calendar(code.upper(), start=start)
    except xcals.errors.InvalidCalendarName:
        raise ValueError(f"QPIPE_CALENDAR = {code!r}: not an exchange code of exchange-calendars "
                         f"(e.g. {', '.join(CANDIDATES)}) and not 'auto'") from None
    early = calendar.closes[calendar.early_closes].dt.tz_convert(calendar.tz)
    return MarketCalendar(code.upper(), code.upper(), calendar.sessions.to_numpy().astype("datetime64[D]"),
                          str(calendar.tz), calendar.close_times[-1][1],
                          early={day.date(): close.time() for day, close in early.items()})


def data_calendar(name: str, key: str, dates) -> MarketCalendar:
    """A calendar of the dates a source has, with the hours of the exchange they match best."""
    sessions = np.unique(np.asarray(dates).astype("datetime64[D]"))
    if len(sessions) == 0:
        raise ValueError(f"{name}: no dates to make a calendar of")
    ranked = best_matching_exchanges(sessions)
    (differences, exchange), runner_up = ranked[0], ranked[1][0] if len(ranked) > 1 else len(sessions)
    # A date on a day of the week the exchange never trades (a Saturday in a CSV) is no session: its rows
    # are then refused by name as "dates that are not sessions", and it gets no partition.
    sessions = sessions[np.isin((sessions.view("int64") + 3) % 7, exchange.weekdays)]
    # The exchange's sessions after the source's last date, where its recent dates are that exchange's (a few
    # days apart at most): another market's holidays would otherwise be no partitions, and the schedule skip them.
    close = differences <= CLOSE_MATCH or (differences <= CLOSE_MATCH_SHARE * min(len(sessions), 500)
                                           and 2 * differences <= runner_up)
    upcoming = exchange.sessions[exchange.sessions > sessions[-1]] if close else None
    # the key names the exchange too: a warehouse of one market's dates refuses another's (a CSV of Tokyo's into
    # a warehouse of New York's was taken, both being "tabular dates")
    return MarketCalendar(f"{name} ({exchange.name} hours)", f"{key} ({exchange.name} hours)", sessions,
                          exchange.timezone, exchange.close, matched=exchange.name, upcoming=upcoming,
                          apart=differences, early=exchange.early)


def best_matching_exchanges(sessions: np.ndarray) -> list[tuple[int, MarketCalendar]]:
    """The candidate exchanges by how many days their sessions differ from ``sessions`` over the last ~2 years,
    nearest first (ties in CANDIDATES' order)."""
    recent = sessions[-500:]
    found = []
    for rank, code in enumerate(CANDIDATES):
        exchange = exchange_calendar(code, str(max(recent[0], np.datetime64(EARLIEST, "D"))))
        theirs = exchange.trading_days(recent[0], min(recent[-1], exchange.last_known))
        found.append((len(np.setxor1d(recent[recent <= exchange.last_known], theirs)), rank, exchange))
        if found[-1][0] == 0:
            break  # exactly its sessions (most data is of the first few candidates): none is nearer
    return [(differences, exchange) for differences, _, exchange in sorted(found, key=lambda f: f[:2])]


def calendar_for(choice: str, source: str, source_path: str = "", columns: dict | None = None,
                 date_format: str = "") -> MarketCalendar:
    """The calendar ``QPIPE_CALENDAR = choice`` means for a source (see the module docstring)."""
    if choice.strip().lower() != "auto":
        return exchange_calendar(choice.strip())
    if source == "qlib":
        from qpipe.data.qlib_provider import read_calendar

        root = Path(source_path).expanduser()
        return data_calendar(f"day.txt of {root}", "qlib day.txt", read_calendar(root))
    if source == "tabular":
        from qpipe.data.tabular import TabularSource
        from qpipe.data.validation import PriceDataError, counted

        dates = TabularSource(source_path, columns=dict(columns or {}), date_format=date_format).dates()
        future = dates[dates > np.datetime64(date.today() + timedelta(days=1))]  # (a day of slack: time zones)
        if len(future):  # they would be sessions of a calendar whose sessions today has none
            raise PriceDataError("dates in the future", source_path, detail=f"{counted(future, 'dates')}: a typo or "
                                 "a vendor's placeholder; remove those rows")
        return data_calendar(f"dates of {source_path}", "tabular dates", dates)
    return exchange_calendar(DEFAULT_EXCHANGE)


@lru_cache(maxsize=4)
def _configured(choice: str, source: str, source_path: str, columns: str, date_format: str) -> MarketCalendar:
    return calendar_for(choice, source, source_path, json.loads(columns), date_format)


def market_calendar() -> MarketCalendar:
    """The configured calendar (QPIPE_CALENDAR and the QPIPE_SOURCE* settings), loaded once per process."""
    settings = get_settings()
    return _configured(settings.calendar, settings.source, settings.source_path,
                       json.dumps(settings.source_columns, sort_keys=True), settings.source_date_format)


def trading_days(start, end) -> np.ndarray:
    """Sessions of the configured calendar in [start, end], as datetime64[D]."""
    return market_calendar().trading_days(start, end)


def is_trading_day(day) -> bool:
    return market_calendar().is_session(day)
