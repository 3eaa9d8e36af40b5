"""Freshness on the market's sessions (qpipe.freshness): a session's partitions are due five hours after its close,
an exchange holiday is never due, and the sensor reports each verdict that changes as a check evaluation, which a
late partition landing turns green."""

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

import qpipe.freshness as freshness
from qpipe.calendar import exchange_calendar
from qpipe.definitions import defs
from qpipe.settings import SettingsError

NEW_YORK = ZoneInfo("America/New_York")
PRICES, ALPHA158 = dg.AssetKey(["raw", "prices"]), dg.AssetKey(["features", "alpha158"])
MLP, LSTM = dg.AssetKey(["models", "mlp_checkpoint"]), dg.AssetKey(["models", "lstm_checkpoint"])


def new_york(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NEW_YORK)


def test_a_session_is_due_five_hours_after_its_close_and_a_holiday_never():
    xnys = exchange_calendar("XNYS")

    def due(now: datetime) -> str:
        return str(freshness.due_session(xnys, now))

    assert due(new_york("2026-11-25 20:59")) == "2026-11-24"
    assert due(new_york("2026-11-25 21:00")) == "2026-11-25"
    assert due(datetime(2026, 11, 26, 2, 0, tzinfo=ZoneInfo("UTC"))) == "2026-11-25"  # the same instant, in UTC
    assert due(new_york("2026-11-26 23:00")) == "2026-11-25"  # Thanksgiving: no session is due
    assert due(new_york("2026-11-30 09:00")) == "2026-11-27"  # over a weekend
    assert due(new_york("2026-04-06 20:00")) == "2026-04-02"  # Good Friday 2026-04-03, then the weekend


def _history(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[tuple[bool, str]]:
    """The check's evaluations of ``key``, oldest first: (passed, description)."""
    records = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(key, freshness.CHECK),
                                                                           limit=20)
    return [(r.event.dagster_event.event_specific_data.passed, r.event.dagster_event.event_specific_data.description)
            for r in reversed(records)]


def test_the_sensor_reports_the_session_last_due_skips_the_holiday_and_turns_green_when_a_late_day_lands(monkeypatch):
    monkeypatch.setenv("QPIPE_RETRAIN_EVERY", "weekly")  # checkpoints on the week's first session: Monday 11-23
    # the morning after Thanksgiving
    monkeypatch.setattr(freshness, "current_time", lambda: new_york("2026-11-27 08:00"))
    sensor = defs.get_sensor_def(freshness.CHECK)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    def land(key: dg.AssetKey, day: str) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=day))

    with dg.instance_for_test() as instance:
        land(PRICES, "2026-11-25")
        land(ALPHA158, "2026-11-24")  # Wednesday's run failed after the prices
        land(MLP, "2026-11-23")
        land(LSTM, "2026-11-25")  # a checkpoint of a day that is not a retrain day: Monday's is still missing
        context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
        skipped = sensor(context)
        assert skipped.skip_message == ("2 of 4 daily assets have the partition due; not in: features/alpha158 "
                                        "(2026-11-25), models/lstm_checkpoint (2026-11-23)")
        [(passed, description)] = _history(instance, PRICES)  # landed now: days after the deadline
        assert passed and description.startswith("2026-11-25 is in since ") and " d " in description
        assert _history(instance, ALPHA158) == [(False, "2026-11-25 is not in: due 2026-11-25 21:00 (America/New_York)")]
        assert _history(instance, LSTM) == [(False, "2026-11-23 is not in: due 2026-11-23 21:00 (America/New_York)")]
        assert [passed for passed, _ in _history(instance, MLP)] == [True]
        assert _history(instance, dg.AssetKey(["features", "alpha360"])) == []  # never materialized: not judged

        sensor(context)  # nothing changed: nothing reported again
        assert len(_history(instance, PRICES)) == len(_history(instance, ALPHA158)) == 1

        land(ALPHA158, "2026-11-25")  # the late run lands
        skipped = sensor(context)
        assert [passed for passed, _ in _history(instance, ALPHA158)] == [False, True]
        assert _history(instance, ALPHA158)[-1][1].endswith("after its deadline")
        assert len(_history(instance, PRICES)) == 1
        assert skipped.skip_message.startswith("3 of 4 daily assets have the partition due")


def test_the_check_executed_from_the_ui_gives_the_sensors_verdict_and_no_daily_run_executes_it(monkeypatch):
    monkeypatch.setattr(freshness, "current_time", lambda: new_york("2026-11-27 08:00"))
    checks = {dg.AssetCheckKey(key, freshness.CHECK) for key in (PRICES, ALPHA158)}
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(PRICES, partition="2026-11-24"))
        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection=checks,
                                                                      asset_selection=set())
        evaluations = {e.asset_key: e for e in job.execute_in_process(instance=instance).get_asset_check_evaluations()}
    assert not evaluations[PRICES].passed and "2026-11-25 is not in" in evaluations[PRICES].description
    assert ALPHA158 not in evaluations  # never materialized: not judged, and not shown as passed either
    daily = defs.resolve_job_def("daily_pipeline").asset_layer.asset_graph.asset_check_keys
    assert daily and not {key for key in daily if key.name == freshness.CHECK}


def test_the_schedules_runs_of_some_assets_leave_the_check_out(monkeypatch):
    """Found in code review: a run naming assets and no checks gets every check of its assets from the whole graph,
    so the schedule's runs on days without retraining judged freshness too, the checkpoints' of a day not retrained."""
    from qpipe.schedules import after_close

    monkeypatch.setenv("QPIPE_RETRAIN_EVERY", "weekly")
    with dg.instance_for_test() as instance, dg.build_schedule_context(
            scheduled_execution_time=new_york("2026-11-25 17:30"), repository_def=defs.get_repository_def(),
            instance=instance) as tick:
        (request,) = after_close.evaluate_tick(tick).run_requests
    assert request.asset_selection and not any(key.path[0] == "models" for key in request.asset_selection)
    checks = {check.name for check in request.asset_check_keys}
    assert freshness.CHECK not in checks and {"prices_are_unique_and_consistent", "no_all_nan_day"} <= checks


def test_qpipe_fresh_by_moves_the_deadline_and_a_bad_value_is_refused_by_name(monkeypatch):
    xnys = exchange_calendar("XNYS")
    monkeypatch.setenv("QPIPE_FRESH_BY", "9.5")  # retrains of the Qlib profile that run into the night
    assert freshness.deadline(xnys, datetime(2026, 11, 25).date()) == new_york("2026-11-26 01:30")
    assert str(freshness.due_session(xnys, new_york("2026-11-26 01:29"))) == "2026-11-24"
    assert str(freshness.due_session(xnys, new_york("2026-11-26 01:30"))) == "2026-11-25"
    monkeypatch.setenv("QPIPE_FRESH_BY", "0")
    with pytest.raises(SettingsError, match="QPIPE_FRESH_BY"):
        freshness.deadline(xnys, datetime(2026, 11, 25).date())


def test_an_asset_last_materialized_by_the_main_job_is_not_judged(monkeypatch):
    """Found in review: right after the quick start every checkpoint showed a failed freshness check (the main job
    trains a test segment before the end): its daily loop has not started, so it is not judged."""
    monkeypatch.setattr(freshness, "current_time", lambda: new_york("2026-11-27 08:00"))

    @dg.asset(key=MLP, partitions_def=defs.resolve_assets_def(MLP).partitions_def)
    def mlp_checkpoint() -> None:
        pass

    with dg.instance_for_test() as instance:
        dg.materialize([mlp_checkpoint], partition_key="2026-09-10", instance=instance, tags={"qpipe/main": "yes"})
        assert freshness.verdicts(instance, exchange_calendar("XNYS"), freshness.current_time(), {MLP}, {MLP}) == []
        dg.materialize([mlp_checkpoint], partition_key="2026-09-11", instance=instance)  # a run of the daily loop
        [verdict] = freshness.verdicts(instance, exchange_calendar("XNYS"), freshness.current_time(), {MLP}, {MLP})
        assert not verdict.passed and verdict.session.isoformat() == "2026-11-25"
