"""The NYSE trading calendar: weekdays minus exchange holidays and special closures.

Rules follow the NYSE holiday schedule (observed on the nearest weekday; Saturday holidays
are not moved to Friday for New Year's Day). Dagster's trading-day partitions, the
synthetic market and the real-data tests all use this one calendar.
"""

from datetime import date
from functools import lru_cache

import numpy as np
import pandas as pd
from pandas.tseries.holiday import (
    AbstractHolidayCalendar,
    GoodFriday,
    Holiday,
    USLaborDay,
    USMartinLutherKingJr,
    USMemorialDay,
    USPresidentsDay,
    USThanksgivingDay,
    nearest_workday,
    sunday_to_monday,
)

# Unscheduled closures (hurricanes, national days of mourning, 9/11).
SPECIAL_CLOSURES = (
    "2001-09-11", "2001-09-12", "2001-09-13", "2001-09-14",
    "2004-06-11", "2007-01-02", "2012-10-29", "2012-10-30",
    "2018-12-05", "2025-01-09",
)


class NYSEHolidays(AbstractHolidayCalendar):
    rules = [
        Holiday("New Year's Day", month=1, day=1, observance=sunday_to_monday),
        USMartinLutherKingJr,
        USPresidentsDay,
        GoodFriday,
        USMemorialDay,
        Holiday("Juneteenth", month=6, day=19, start_date="2022-01-01", observance=nearest_workday),
        Holiday("Independence Day", month=7, day=4, observance=nearest_workday),
        USLaborDay,
        USThanksgivingDay,
        Holiday("Christmas", month=12, day=25, observance=nearest_workday),
    ]


CALENDAR_START = "2000-01-03"
CALENDAR_END = "2035-12-31"


@lru_cache(maxsize=1)
def _holidays() -> frozenset[date]:
    rule_days = NYSEHolidays().holidays(CALENDAR_START, CALENDAR_END)
    days = {d.date() for d in rule_days} | {date.fromisoformat(d) for d in SPECIAL_CLOSURES}
    return frozenset(d for d in days if d.weekday() < 5)


def holidays(start: str | date = CALENDAR_START, end: str | date = CALENDAR_END) -> list[date]:
    """Weekday exchange closures in [start, end], ascending."""
    lo, hi = pd.Timestamp(start).date(), pd.Timestamp(end).date()
    return sorted(d for d in _holidays() if lo <= d <= hi)


def trading_days(start: str | date, end: str | date) -> np.ndarray:
    """NYSE trading days in [start, end] as datetime64[D], ascending."""
    days = pd.bdate_range(start, end).date
    closed = _holidays()
    return np.array([d for d in days if d not in closed], dtype="datetime64[D]")


def is_trading_day(day: str | date) -> bool:
    d = pd.Timestamp(day).date()
    return d.weekday() < 5 and d not in _holidays()
