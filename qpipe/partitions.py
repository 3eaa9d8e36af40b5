"""Trading-day partitions shared by every daily asset (NYSE weekdays minus holidays).

``end_offset=1`` makes today's partition exist during today, so the after-close schedule can
run it; the schedule itself skips weekends and holidays (reference/dagster.md §2.6).
"""

from datetime import datetime

import dagster as dg

from qpipe.calendar import holidays
from qpipe.settings import get_settings

TIMEZONE = "America/New_York"
WEEKENDS = ["0 0 * * 6", "0 0 * * 0"]

trading_days = dg.DailyPartitionsDefinition(
    start_date=get_settings().partitions_start,
    timezone=TIMEZONE,
    end_offset=1,
    exclusions=[*WEEKENDS, *(datetime(d.year, d.month, d.day) for d in holidays(get_settings().partitions_start))],
)
