"""Trading-day partitions shared by every daily asset: the sessions of the market's calendar (qpipe.calendar).

Days of the week on which the market never trades are excluded by cron, its holidays and
closures up to the calendar's last known day by date; later trading weekdays are partitions
already, so a session a provider appends to its calendar needs no code change. The partitions
are dated in the exchange's time zone. ``end_offset=1`` makes today's partition exist during
today, so the after-close schedule can run it; the schedule itself skips days that are not
sessions (reference/dagster.md §2.6).
"""

from datetime import datetime

import dagster as dg

from qpipe.calendar import market_calendar
from qpipe.settings import get_settings

CRON_DAY = {0: "1", 1: "2", 2: "3", 3: "4", 4: "5", 5: "6", 6: "0"}  # Monday = 0 -> cron's day of the week


def build_partitions(first: str) -> dg.DailyPartitionsDefinition:
    calendar = market_calendar()
    sessions = calendar.trading_days(first, calendar.latest_session())
    if len(sessions) == 0:
        raise ValueError(f"QPIPE_PARTITIONS_START = {first}: no session from it to the latest one, "
                         f"{calendar.latest_session()} ({calendar.name}); the first partition must be a past day")
    start = str(sessions[0])
    never = [f"0 0 * * {CRON_DAY[d]}" for d in range(7) if d not in calendar.weekdays]
    closed = [datetime(d.year, d.month, d.day) for d in calendar.closed_weekdays(start)]
    return dg.DailyPartitionsDefinition(start_date=start, timezone=calendar.timezone, end_offset=1,
                                        exclusions=[*never, *closed])


trading_days = build_partitions(get_settings().first_partition)
