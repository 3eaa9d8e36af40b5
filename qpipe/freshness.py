"""Freshness on the market's sessions: each session's partitions are due QPIPE_FRESH_BY hours (5) after its close.

Dagster's FreshnessPolicy is a cron of weekdays, which cannot skip an exchange's holidays (each would show every
daily asset late), and it passes on any materialization in its window, a backfill of an old partition too. The
check ``fresh_after_the_close`` asks instead, of each daily asset the schedule runs (QPIPE_MODELS), for the
partition of the session last due; of a checkpoint, for that of the last retrain day due (QPIPE_RETRAIN_EVERY).
The sensor of the same name evaluates it every two minutes and reports a verdict when it changes (a new session
due, a late partition landing) as a runless check evaluation; "Execute" on the check in the UI gives the same
verdict. An asset never materialized, or last by the main job or qpipe qrun, is not judged: its daily loop has not
started.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from qpipe.cadence import retrain_days
from qpipe.calendar import MarketCalendar, market_calendar
from qpipe.jobs import DAILY, scheduled_models
from qpipe.settings import get_settings

CHECK = "fresh_after_the_close"
CHECKPOINTS = dg.AssetSelection.groups("models")


def current_time() -> datetime:
    return datetime.now(ZoneInfo("UTC"))


def deadline(calendar: MarketCalendar, day: date) -> datetime:
    return datetime.combine(day, calendar.close, ZoneInfo(calendar.timezone)) + timedelta(hours=get_settings().fresh_by)


def due_session(calendar: MarketCalendar, now: datetime) -> date:
    """The latest session whose partitions are due by ``now``."""
    day = calendar.latest_session(now.astimezone(ZoneInfo(calendar.timezone)).date())
    while deadline(calendar, day) > now:
        day = calendar.latest_session(day - timedelta(days=1))
    return day


def last_retrain_day(session: date) -> date | None:
    """The last retrain day at or before ``session`` (within a year and a half), whose checkpoint is then due."""
    settings = get_settings()
    days = retrain_days(session - timedelta(days=550), session, settings.retrain_every, settings.first_partition)
    return days[-1].item() if len(days) else None


@dataclass(frozen=True)
class Verdict:
    key: dg.AssetKey
    session: date
    due: datetime
    landed: datetime | None  # when the session's partition was materialized, or None

    @property
    def passed(self) -> bool:
        return self.landed is not None

    @property
    def description(self) -> str:
        if self.landed is None:
            return f"{self.session} is not in: due {self.due:%Y-%m-%d %H:%M} ({self.due.tzinfo})"
        late = int((self.landed - self.due).total_seconds()) // 60
        return (f"{self.session} is in since {self.landed.astimezone(self.due.tzinfo):%Y-%m-%d %H:%M}" +
                (f", {_duration(late)} after its deadline" if late > 0 else ""))

    @property
    def metadata(self) -> dict:
        return {"session": str(self.session), "due": dg.MetadataValue.timestamp(self.due),
                **({"landed": dg.MetadataValue.timestamp(self.landed)} if self.landed else {})}

    def result(self, kind: type = dg.AssetCheckResult):
        """The verdict as a check step yields it, or (``kind`` AssetCheckEvaluation) as the sensor reports it."""
        return kind(asset_key=self.key, check_name=CHECK, passed=self.passed, description=self.description,
                    metadata=self.metadata)


def _duration(minutes: int) -> str:
    days, minutes = divmod(minutes, 24 * 60)
    return (f"{days} d " if days else "") + f"{minutes // 60} h {minutes % 60:02d} min"


def verdicts(instance: dg.DagsterInstance, calendar: MarketCalendar, now: datetime, keys: set[dg.AssetKey],
             checkpoints: set[dg.AssetKey]) -> list[Verdict]:
    """The verdict, as of ``now``, on each of ``keys`` that has ever been materialized."""
    session = due_session(calendar, now)
    retrained = last_retrain_day(session) if keys & checkpoints else None
    found = []
    for key in sorted(keys):
        day = retrained if key in checkpoints else session
        if day is None:
            continue
        records = instance.fetch_materializations(  # the first: a later run of an on-time day is not late
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day.isoformat()]), limit=1, ascending=True).records
        if not records and _loop_not_started(instance, key):
            continue  # (these queries only for a partition not in)
        landed = datetime.fromtimestamp(records[0].timestamp, ZoneInfo(calendar.timezone)) if records else None
        found.append(Verdict(key, day, deadline(calendar, day), landed))
    return found


def _loop_not_started(instance: dg.DagsterInstance, key: dg.AssetKey) -> bool:
    """Whether ``key`` was never materialized, or last by the main job or qpipe qrun: the history the daily loop
    starts from (found in review: right after the quick start, every checkpoint showed a failed check, its newest
    being the main job's, a test segment before the end)."""
    latest = instance.get_latest_materialization_event(key)
    if latest is None:
        return True
    run = instance.get_run_by_id(latest.run_id) if latest.run_id else None
    return run is not None and run.tags.get("qpipe/main") == "yes"


def checks_but_freshness(graph, keys) -> frozenset[dg.AssetCheckKey]:
    """The checks of ``keys`` but this one, for a run of them: a run that names none gets every check of its assets
    (its sensor evaluates this one; in a run it would judge the checkpoint of a day the run does not train)."""
    return frozenset(check for check in graph.asset_check_keys if check.asset_key in keys and check.name != CHECK)


def build_freshness(assets: Sequence[dg.AssetsDefinition]) -> tuple[dg.AssetChecksDefinition, dg.SensorDefinition]:
    """The check on each daily partitioned asset the schedule runs, and the sensor that evaluates it."""
    partitioned = {key for definition in assets if definition.partitions_def is not None for key in definition.keys}
    keys = scheduled_models(DAILY).resolve(assets) & partitioned
    checkpoints = CHECKPOINTS.resolve(assets) & keys
    calendar = market_calendar()
    what = (f"The partition of the session last due is in (of a checkpoint: of the last retrain day due); a "
            f"session's partitions are due {get_settings().fresh_by:g} hours (QPIPE_FRESH_BY) after the "
            f"{calendar.close:%H:%M} close "
            f"of {calendar.name} ({calendar.timezone}), holidays are not due.")

    @dg.multi_asset_check(name=CHECK, specs=[dg.AssetCheckSpec(CHECK, asset=key, description=what) for key in keys],
                          can_subset=True, description=what)
    def fresh_after_the_close_check(context: dg.AssetCheckExecutionContext):
        wanted = {check.asset_key for check in context.selected_asset_check_keys}
        judged = verdicts(context.instance, calendar, current_time(), wanted, checkpoints)
        yield from (verdict.result() for verdict in judged)  # an asset not judged gets no result (not a pass)

    @dg.sensor(name=CHECK, minimum_interval_seconds=120, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Every 2 min: {what} A verdict that changes is reported as a runless evaluation of the "
                           f"check {CHECK} (qpipe.freshness).")
    def fresh_after_the_close_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        judged = verdicts(context.instance, calendar, current_time(), keys, checkpoints)
        before = json.loads(context.cursor) if context.cursor else {}
        state = {verdict.key.to_user_string(): [str(verdict.session), verdict.passed] for verdict in judged}
        for verdict in judged:
            if before.get(verdict.key.to_user_string()) != state[verdict.key.to_user_string()]:
                context.instance.report_runless_asset_event(verdict.result(dg.AssetCheckEvaluation))
        context.update_cursor(json.dumps(state))
        late = [f"{verdict.key.to_user_string()} ({verdict.session})" for verdict in judged if not verdict.passed]
        return dg.SkipReason(f"{len(judged) - len(late)} of {len(judged)} daily assets have the partition due" +
                             (f"; not in: {', '.join(late)}" if late else "") if judged else
                             "no daily asset materialized yet")

    return fresh_after_the_close_check, fresh_after_the_close_sensor
