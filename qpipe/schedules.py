"""The after-close schedule: trading days only (reference/dagster.md §2.6 explains why it is hand-written)."""

from zoneinfo import ZoneInfo

import dagster as dg

from qpipe.calendar import is_trading_day
from qpipe.jobs import daily_pipeline
from qpipe.partitions import TIMEZONE

AFTER_CLOSE = "30 17 * * 1-5"


@dg.schedule(cron_schedule=AFTER_CLOSE, execution_timezone=TIMEZONE, job=daily_pipeline,
             default_status=dg.DefaultScheduleStatus.RUNNING)
def after_close(context: dg.ScheduleEvaluationContext):
    """At 17:30 New York time on weekdays: run that day's partition, unless the exchange was closed."""
    day = context.scheduled_execution_time.astimezone(ZoneInfo(TIMEZONE)).date()
    if not is_trading_day(day):
        return dg.SkipReason(f"{day} is an exchange holiday")
    return dg.RunRequest(partition_key=day.isoformat(), run_key=day.isoformat())
