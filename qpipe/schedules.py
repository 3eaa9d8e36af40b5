"""The after-close schedule: the market calendar's sessions only (reference/dagster.md §2.6: why hand-written).

It fires ``qpipe.calendar.SCHEDULE_DELAY`` after the exchange's close, in the exchange's time zone
(17:30 New York for XNYS, 16:30 Shanghai for XSHG), on the weekdays the market trades.

A tick runs its day's partition, and before it each session since the newest stored prices partition (at most
CATCH_UP): Dagster runs only the last due tick of a schedule like this one after the daemon was down (it catches up
only partitioned schedules), and the days in between would be missing. It also runs again each of the CATCH_UP sessions
before its own whose newest daily_pipeline run failed (a fault fixed since, a vendor's file late past the retries):
once per failed run, its run key naming that run. Run keys (the day) keep a day from running twice; the runs of the
schedule take turns (dagster.yaml's tag limit on dagster/schedule_name), oldest first.

On days that are not retrain days (QPIPE_RETRAIN_EVERY) the run leaves the checkpoints out; the
predictions then come from the newest checkpoint at or before the day. Architectures not listed in
QPIPE_MODELS are left out of every run; QPIPE_TRAINING=quick trains the checkpoints with the main job's
profile (qpipe.training_profiles) instead of their defaults.
"""

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from qpipe.assets.models import checkpoint_key
from qpipe.assets.prices import PRICES
from qpipe.cadence import is_retrain_day
from qpipe.calendar import exchange_calendar, market_calendar
from qpipe.freshness import checks_but_freshness
from qpipe.jobs import DAILY, WITHOUT_RETRAINING, scheduled_models
from qpipe.settings import get_settings
from qpipe.training_profiles import checkpoint_config

CALENDAR = market_calendar()
CATCH_UP = 10  # sessions before its own a tick runs at most: a longer outage is a backfill's (the skip says so)


def _cadence() -> str:
    every = get_settings().retrain_every
    return f"every {every} trading days" if isinstance(every, int) else str(every)


@dg.schedule(cron_schedule=CALENDAR.schedule_cron(), execution_timezone=CALENDAR.timezone, job_name="daily_pipeline",
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description=f"After the close of {CALENDAR.name} on its sessions: that day's partition of daily_pipeline, "
                         "after those of the sessions missed since the newest stored prices. "
                         # what tonight's tick trains (found in review: the page did not say)
                         f"Models: {', '.join(get_settings().models)} (QPIPE_MODELS), retrained {_cadence()} "
                         f"(QPIPE_RETRAIN_EVERY) with the {get_settings().training} training profile (QPIPE_TRAINING).")
def after_close(context: dg.ScheduleEvaluationContext):
    """After the close on the market's weekdays: run that day's partition, unless the exchange was closed, after
    the sessions missed since the newest stored prices partition and the recent ones whose newest run failed."""
    day = context.scheduled_execution_time.astimezone(ZoneInfo(CALENDAR.timezone)).date()
    missed, failed = _missed(context, day), _failed(context, day)
    if not CALENDAR.is_session(day) and not missed and not failed:
        if CALENDAR.matched and exchange_calendar(CALENDAR.matched).is_session(day):  # a day the source lacks
            return dg.SkipReason(f"{day} is not a session of {CALENDAR.name}: {CALENDAR.matched} traded that day, but "
                                 f"the source has no row for it, and under QPIPE_CALENDAR=auto it is no partition; "
                                 f"add the day's rows (QPIPE_CALENDAR={CALENDAR.matched} refuses such a source), "
                                 "unless the exchange was closed (a typhoon, a closure exchange-calendars does not "
                                 "know)")
        return dg.SkipReason(f"{day} is not a session of {CALENDAR.name} (an exchange holiday)")
    days = {session: ("missed by the schedule", session.isoformat()) for session in missed}
    days |= {session: (f"run {run_id} failed", f"{session} after {run_id}")
             for session, run_id in failed.items()}
    if CALENDAR.is_session(day):
        days[day] = (None, day.isoformat())
    return [_request(context, session, *days[session]) for session in sorted(days)]


def _missed(context: dg.ScheduleEvaluationContext, day: date) -> list[date]:
    """The sessions before ``day`` after the newest stored prices partition, the last CATCH_UP of them."""
    stored = context.instance.get_materialized_partitions(PRICES)
    if not stored:
        return []  # nothing stored yet: the history is loaded by hand (the README's main job, a backfill)
    newest = date.fromisoformat(max(stored))
    missed = [d.item() for d in CALENDAR.trading_days(newest + timedelta(days=1), day - timedelta(days=1))]
    if len(missed) > CATCH_UP:
        context.log.warning(f"{len(missed)} sessions since the newest stored prices ({newest}) were never run; this "
                            f"tick runs the last {CATCH_UP}: backfill daily_pipeline for "
                            f"{missed[0]}...{missed[-CATCH_UP - 1]}")
    return missed[-CATCH_UP:]


def _failed(context: dg.ScheduleEvaluationContext, day: date) -> dict[date, str]:
    """The sessions of the CATCH_UP before ``day`` whose newest daily_pipeline run failed, each with that run's id.

    A re-execution or a backfill of the day is a daily_pipeline run too: the newest decides. Runs of other jobs (an
    asset materialized alone, an experiment) are not the day's pipeline and change nothing; a run Dagster retries
    itself (run_retries: dagster/will_retry) and a run cancelled by hand are left alone (found in review).
    """
    recent = CALENDAR.trading_days(day - timedelta(days=7 * CATCH_UP), day - timedelta(days=1))[-CATCH_UP:]
    if not len(recent):
        return {}
    runs = context.instance.get_runs(dg.RunsFilter(job_name="daily_pipeline",
                                                   tags={"dagster/partition": list(recent.astype(str))}))
    newest: dict[str, dg.DagsterRun] = {}
    for run in runs:  # newest first
        newest.setdefault(run.tags["dagster/partition"], run)
    return {date.fromisoformat(key): run.run_id for key, run in sorted(newest.items())
            if run.status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/will_retry") != "true"}


def _request(context: dg.ScheduleEvaluationContext, day: date, caught_up: str | None, run_key: str) -> dg.RunRequest:
    settings = get_settings()
    retrain = is_retrain_day(day, settings.retrain_every, settings.first_partition)
    selection = scheduled_models(DAILY if retrain else WITHOUT_RETRAINING)
    graph = context.repository_def.asset_graph
    keys = None if selection is DAILY else sorted(selection.resolve(graph))
    training = {checkpoint_key(name).to_python_identifier(): {"config": checkpoint_config(settings.training, name)}
                for name in settings.models} if retrain and settings.training != "qlib" else {}
    return dg.RunRequest(partition_key=day.isoformat(), run_key=run_key, asset_selection=keys,
                         asset_check_keys=None if keys is None else sorted(checks_but_freshness(graph, set(keys))),
                         run_config={"ops": training} if training else {},
                         tags={"qpipe/retrain": "yes" if retrain else f"no (every {settings.retrain_every})",
                               "qpipe/models": ",".join(settings.models), "qpipe/training": settings.training,
                               **({"qpipe/caught-up": caught_up} if caught_up else {})})
