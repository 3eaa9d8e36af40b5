"""The after-close schedule: trading days only (reference/dagster.md §2.6 explains why it is hand-written).

On days that are not retrain days (QPIPE_RETRAIN_EVERY) the run leaves the checkpoints out; the
predictions then come from the newest checkpoint at or before the day. Architectures not listed in
QPIPE_MODELS are left out of every run.
"""

from zoneinfo import ZoneInfo

import dagster as dg

from qpipe.cadence import is_retrain_day
from qpipe.calendar import is_trading_day
from qpipe.jobs import DAILY, WITHOUT_RETRAINING, daily_pipeline
from qpipe.models.registry import ARCHITECTURES
from qpipe.partitions import TIMEZONE
from qpipe.settings import get_settings

AFTER_CLOSE = "30 17 * * 1-5"


@dg.schedule(cron_schedule=AFTER_CLOSE, execution_timezone=TIMEZONE, job=daily_pipeline,
             default_status=dg.DefaultScheduleStatus.RUNNING)
def after_close(context: dg.ScheduleEvaluationContext):
    """At 17:30 New York time on weekdays: run that day's partition, unless the exchange was closed."""
    day = context.scheduled_execution_time.astimezone(ZoneInfo(TIMEZONE)).date()
    if not is_trading_day(day):
        return dg.SkipReason(f"{day} is an exchange holiday")
    settings = get_settings()
    retrain = is_retrain_day(day, settings.retrain_every, settings.partitions_start)
    selection = DAILY if retrain else WITHOUT_RETRAINING
    for arch in set(ARCHITECTURES) - set(settings.models):
        selection = selection - dg.AssetSelection.tag("qpipe/arch", arch)
    keys = None if selection is DAILY else sorted(selection.resolve(context.repository_def.asset_graph))
    return dg.RunRequest(partition_key=day.isoformat(), run_key=day.isoformat(), asset_selection=keys,
                         tags={"qpipe/retrain": "yes" if retrain else f"no (every {settings.retrain_every})",
                               "qpipe/models": ",".join(settings.models)})
