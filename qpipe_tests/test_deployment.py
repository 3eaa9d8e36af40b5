"""A team deployment, run as the README tells a team to run it (issue 14, points 1-3).

PostgreSQL (Debian's server, started here on a loopback port) holds runs, event log and schedules;
``dagster-webserver`` and ``dagster-daemon`` run as separate processes. The daemon, not the test,
launches every run: a history seeded through the run queue, a backfill of checkpoints submitted as
the UI submits one (one run per day), the after-close schedule's tick for the last session, and the
leaderboard sensor's runs after them. Then a real browser (Playwright driving Debian's Chromium)
looks at the result and launches a one-partition materialization by clicking through the UI.
"""

import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType, ScheduleInstigatorData

from qpipe.deploy.postgres import LocalPostgres
from qpipe_tests.browser import launch_chromium, not_blank
from qpipe_tests.conftest import REPO
from qpipe_tests.deployment import LOCATION, Deployment

pytestmark = pytest.mark.slow

LAUNCH_RUN = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
LAUNCH_BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
SCHEDULE = """query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
  ... on Schedule { scheduleState { id status } } } }"""
STOP_SCHEDULE = """mutation($id: String) { stopRunningSchedule(id: $id) { __typename } }"""
QUICK = {"train_days": 60, "valid_days": 20, "params": {"n_epochs": 3, "batch_size": 256}}


def test_the_production_config_is_the_default_one_with_postgres_storage():
    default = yaml.safe_load((REPO / "dagster.yaml").read_text())
    production = yaml.safe_load((REPO / "deploy" / "postgres" / "dagster.yaml").read_text())
    storage = production.pop("storage")
    assert production == default
    assert set(storage["postgres"]["postgres_db"]) >= {"hostname", "port", "username", "password", "db_name"}


def last_tick(schedule: dg.ScheduleDefinition, calendar) -> tuple[datetime, str]:
    """The after-close schedule's latest tick that has passed and fell on a session, and that session."""
    minute, hour = (int(field) for field in schedule.cron_schedule.split()[:2])
    now = datetime.now(ZoneInfo(calendar.timezone))
    day = now.date()
    while True:
        tick = datetime(day.year, day.month, day.day, hour, minute, tzinfo=now.tzinfo)
        if tick <= now and calendar.is_session(day):
            return tick, day.isoformat()
        day -= timedelta(days=1)


class DailyOperation:
    """What the daemon did, for the tests below to look at."""

    def __init__(self, deployment: Deployment, day: str, backfill_days: list[str], runs: dict[str, list[dg.DagsterRun]]):
        self.deployment, self.day, self.backfill_days, self.runs = deployment, day, backfill_days, runs


@pytest.fixture(scope="module")
def operation(tmp_path_factory):
    from qpipe.calendar import market_calendar, trading_days
    from qpipe.schedules import after_close

    calendar = market_calendar()
    tick, day = last_tick(after_close, calendar)
    sessions = [str(d) for d in trading_days(datetime.fromisoformat(day).date() - timedelta(days=400), day)]
    first, backfill_days = sessions[-160], sessions[-3:-1]
    # The tick's day is not a retrain day (every 1000 sessions from the first partition): its run predicts with
    # the backfill's newest checkpoint, as a weekly or monthly cadence does on most days.
    settings = {"QPIPE_SYNTHETIC_INSTRUMENTS": "40", "QPIPE_MODELS": "mlp", "QPIPE_PARTITIONS_START": first,
                "QPIPE_RETRAIN_EVERY": "1000", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    with LocalPostgres() as postgres:
        deployment = Deployment(tmp_path_factory.mktemp("deployment"), postgres, **settings)
        try:
            deployment.start_webserver()
            # Hold the schedule until the history exists: stopped in the UI, as an operator would.
            state = deployment.graphql(SCHEDULE, s={**LOCATION, "scheduleName": "after_close"})
            deployment.graphql(STOP_SCHEDULE, id=state["scheduleOrError"]["scheduleState"]["id"])
            deployment.start_daemon()
            runs = _operate(deployment, sessions, backfill_days, tick)
            yield DailyOperation(deployment, day, backfill_days, runs)
        finally:
            deployment.stop()
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def _launch(deployment: Deployment, keys: list[str], start: str, end: str) -> str:
    answer = deployment.graphql(LAUNCH_RUN, p={
        "selector": {**LOCATION, "jobName": "daily_pipeline", "assetSelection": [{"path": k.split("/")} for k in keys]},
        "runConfigData": {"execution": {"config": {"in_process": {}}}},
        "executionMetadata": {"tags": [{"key": "dagster/asset_partition_range_start", "value": start},
                                       {"key": "dagster/asset_partition_range_end", "value": end}]}})["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def _operate(deployment: Deployment, sessions: list[str], backfill_days: list[str], tick: datetime) -> dict:
    instance, runs = deployment.instance, {}
    began = time.monotonic()

    def done(phase: str) -> None:  # shown with a failure: where the time went
        print(f"{phase}: {time.monotonic() - began:.0f}s; " + ", ".join(
            f"{r.job_name} {sorted(k.to_user_string() for k in r.asset_selection or [])} {r.status.value}"
            for r in runs.get(phase, [])), flush=True)

    # 1. History up to the session before the tick, through the run queue (QUEUED until the daemon takes it).
    for keys, start in ((["raw/prices", "raw/universe", "raw/concepts"], sessions[-160]),
                        (["features/alpha158", "features/alpha360", "features/label"], sessions[-100])):
        run_id = _launch(deployment, keys, start, sessions[-2])
        runs.setdefault("seed", []).extend(deployment.wait_for_runs(dg.RunsFilter(run_ids=[run_id]), 1, timeout=300))
    done("seed")
    # 2. A backfill of checkpoints over two sessions, as the UI submits one.
    answer = deployment.graphql(LAUNCH_BACKFILL, p={
        "partitionNames": backfill_days, "assetSelection": [{"path": ["models", "mlp_checkpoint"]}],
        "runConfigData": {"ops": {"models__mlp_checkpoint": {"config": QUICK}},
                          "execution": {"config": {"in_process": {}}}}})["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    backfill = answer["backfillId"]
    runs["backfill"] = deployment.wait_for_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}), 2, timeout=420)
    done("backfill")
    # 3. Their predictions and IC in one run, as `dg launch --partition-range` would; meanwhile the schedule is
    #    RUNNING since a minute before the last session's tick: the daemon's scheduler (at the next minute) finds
    #    the tick it has not run yet and launches it, as after a daemon restart (no sleep until 17:30).
    run_id = _launch(deployment, ["predictions/mlp_predictions", "reports/mlp_ic"], backfill_days[0], backfill_days[-1])

    def schedule_state():
        return next(s for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
                    if s.name == "after_close")

    state = schedule_state()
    instance.update_instigator_state(state.with_status(InstigatorStatus.RUNNING).with_data(
        ScheduleInstigatorData(state.instigator_data.cron_schedule, start_timestamp=tick.timestamp() - 60)))
    # Stopped again as soon as the tick's run exists: a module that runs on past 17:30 New York on a session day
    # would otherwise also get that day's tick (and its run, and a leaderboard run after it).
    day = tick.date().isoformat()
    ticked = dg.RunsFilter(tags={"dagster/schedule_name": "after_close", "dagster/partition": day})
    deadline = time.monotonic() + 420
    while not instance.get_runs(ticked):
        assert time.monotonic() < deadline and deployment.processes["daemon"].poll() is None, \
            f"no run of the {day} tick within 420 s; daemon log:\n{deployment.log('daemon')[-4000:]}"
        time.sleep(1)
    instance.update_instigator_state(schedule_state().with_status(InstigatorStatus.STOPPED))
    runs["scores"] = deployment.wait_for_runs(dg.RunsFilter(run_ids=[run_id]), 1, timeout=300)
    done("scores")
    runs["tick"] = deployment.wait_for_runs(ticked, 1, timeout=420)
    done("tick")
    # (a later tick's run, launched in the second before the stop, also ends before the warehouse is read)
    every_tick = dg.RunsFilter(tags={"dagster/schedule_name": "after_close"})
    runs["later_ticks"] = [run for run in deployment.wait_for_runs(every_tick, len(instance.get_runs(every_tick)), 420)
                           if run.tags.get("dagster/partition") != day]
    # 4. The leaderboard sensor: a leaderboard run after each run that stored daily IC (the tick's: the scores of
    #    the first backfilled day became known on its day; the scores run stored none, no label was known yet).
    runs["leaderboard"] = deployment.wait_for_runs(dg.RunsFilter(job_name="leaderboard_job"), 1, timeout=240)
    done("leaderboard")
    deadline = time.monotonic() + 120  # the backfill daemon marks the backfill done on its next pass (every 30 s)
    while instance.get_backfill(backfill).status.value == "REQUESTED":
        assert time.monotonic() < deadline, deployment.log("daemon")[-4000:]
        time.sleep(2)
    runs["backfill_status"] = instance.get_backfill(backfill).status.value
    return runs


def test_the_daemon_runs_the_queue_a_backfill_one_run_per_day_the_schedule_tick_and_the_sensor(operation):
    runs = operation.runs
    for kind in ("seed", "backfill", "scores", "tick", "leaderboard"):
        assert {run.status for run in runs[kind]} == {dg.DagsterRunStatus.SUCCESS}, (kind, operation.deployment.log("daemon")[-3000:])
    # One run per day (Qlib's rolling retrain).
    spans = sorted((run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"])
                   for run in runs["backfill"])
    assert spans == [(day, day) for day in operation.backfill_days]
    assert runs["backfill_status"] == "COMPLETED_SUCCESS"
    (tick,) = runs["tick"]  # the last session's tick; a later one only where the module ran on past its 17:30
    assert tick.job_name == "daily_pipeline" and tick.tags["dagster/partition"] == operation.day
    assert tick.tags["qpipe/retrain"].startswith("no") and tick.tags["qpipe/models"] == "mlp"
    assert all(run.tags["dagster/partition"] > operation.day for run in runs["later_ticks"])
    later = {run.run_id for run in runs["later_ticks"]}
    sensor_runs = runs["leaderboard"]
    assert {run.tags.get("dagster/sensor_name") for run in sensor_runs} == {"refresh_leaderboard"}
    assert [run.tags.get("dagster/run_key") for run in sensor_runs if run.tags.get("dagster/run_key") not in later] \
        == [tick.run_id]

    warehouse = Path(operation.deployment.env["QPIPE_HOME"]) / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        predicted = [str(d) for (d,) in con.execute(
            "SELECT DISTINCT date FROM predictions.scores WHERE model = 'mlp' AND date <= ? ORDER BY 1",
            [operation.day]).fetchall()]
        known = [(str(d), str(k)) for d, k in con.execute(
            "SELECT date, known_on FROM reports.daily_ic WHERE model = 'mlp' AND known_on <= ? ORDER BY 1",
            [operation.day]).fetchall()]
        board = con.execute("SELECT model, days FROM reports.leaderboard").fetchall()
    assert predicted == [*operation.backfill_days, operation.day]
    # The tick stored the first backfilled day's IC, its label known on the tick's day; the scores run stored none.
    assert known == [(operation.backfill_days[0], operation.day)]
    assert board == [("mlp", 1)] or (later and board[0][0] == "mlp")  # (a later tick stores the next day's IC)
    # Nothing of it in sqlite: runs, events and schedule ticks are PostgreSQL's.
    assert not (operation.deployment.home / "history").exists()
    assert type(operation.deployment.instance.run_storage).__name__ == "PostgresRunStorage"


def test_the_ui_in_a_real_browser_shows_the_work_and_launches_a_partition_by_clicks(operation, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    deployment, day = operation.deployment, operation.day
    shots = tmp_path / "screenshots"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=30_000)  # a page's first render on a loaded machine takes more than the 5 s default

        def shot(name: str) -> None:
            page.screenshot(path=shots / f"{name}.png")

        try:
            page.goto(f"{deployment.url}/asset-groups")  # the global asset graph, one box per group
            for group in ("ingest", "features", "models", "predictions", "reports", "summary"):
                expect(page.locator("svg").get_by_text(group, exact=True).first).to_be_visible()
            shot("asset_graph")

            page.goto(f"{deployment.url}/assets/models/mlp_checkpoint?view=partitions")
            for backfilled in operation.backfill_days:
                expect(page.get_by_text(backfilled, exact=True).first).to_be_visible()
            expect(page.get_by_text(f"Materialized ({len(operation.backfill_days)})")).to_be_visible()
            shot("checkpoint_partitions")
            page.get_by_text(operation.backfill_days[-1], exact=True).first.click()  # that day's checkpoint
            for entry in ("epochs", "best_epoch", "stopped_at_epoch", "samples_per_second", "peak_rss_mb", "device"):
                expect(page.get_by_text(entry, exact=True).first).to_be_visible()
            shot("checkpoint_metadata")

            def drawn(key: str) -> None:
                """A chart inside the metadata, which the UI draws in a dialog (found in review: every chart was a
                path on the server, which a browser elsewhere cannot open)."""
                page.locator("tr", has_text=key).get_by_text("[Show Markdown]").first.click()
                chart = page.get_by_role("dialog").locator("img").first
                expect(chart).to_be_visible()
                assert chart.evaluate("i => i.complete && i.naturalWidth > 300"), key
                shot(key.replace(" ", "_"))
                page.get_by_role("dialog").get_by_role("button", name="Close").click()

            drawn("training curves")
            page.goto(f"{deployment.url}/assets/reports/leaderboard")
            expect(page.get_by_text("mlp Rank IC").first).to_be_visible()
            drawn("cumulative Rank IC")
            shot("leaderboard")

            # A one-partition materialization, launched by clicking: Materialize..., the day, Launch 1 run.
            page.goto(f"{deployment.url}/assets/raw/prices")  # the day's prices again: the same rows, replaced
            page.get_by_role("button", name="Materialize…").first.click()
            dialog = page.get_by_role("dialog")
            partitions = dialog.locator("input:not([type=checkbox])").first
            partitions.click()
            partitions.fill(day)
            partitions.press("Enter")
            expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
            shot("launch_dialog")
            launched = time.time()
            dialog.get_by_role("button", name="Launch 1 run").click()
            run = None
            deadline = time.monotonic() + 180
            while run is None or not run.is_finished:
                assert time.monotonic() < deadline, deployment.log("daemon")[-3000:]
                time.sleep(2)
                run = next((r for r in deployment.instance.get_runs(dg.RunsFilter(tags={"dagster/partition": day}))
                            if r.asset_selection == {dg.AssetKey(["raw", "prices"])}
                            and deployment.instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() >= launched - 1),
                           None)
            assert run.status == dg.DagsterRunStatus.SUCCESS
            page.goto(f"{deployment.url}/runs/{run.run_id}")
            expect(page.get_by_text("Success").first).to_be_visible()
            shot("launched_run")
        except Exception:
            shot("failure")  # what the page showed, beside the others in the test's tmp_path
            print(f"screenshots: {shots}")
            raise
        browser.close()
    for png in sorted(shots.glob("*.png")):
        assert not_blank(png), f"{png.name} is blank"
    assert len(list(shots.glob("*.png"))) == 8  # the pages, and the two charts drawn from the metadata
