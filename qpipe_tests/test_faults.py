"""SIGKILL in the middle of work, as a crash or the OOM killer would: nothing half-written survives.

Each case runs qpipe as a user does (`dg launch` in a process group of its own, a real sqlite
instance, a real DuckDB warehouse), kills the group while a step works, and then requires: the
warehouse opens and holds exactly what it held for the affected days, no checkpoint file at its
canonical path, and a rerun that succeeds (the dead run's pool slot is freed by qpipe.reaper).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.events import DagsterEventType

from qpipe.training import load_checkpoint
from qpipe_tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DAY = "2024-03-28"  # the checkpoint partition
FEATURES = ("2023-11-01", "2024-06-28")  # the checkpoint's 60 + 20 sessions before DAY, and SCORED
SCORED = ("2024-04-01", "2024-06-28")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    dg.DagsterInstance.from_config(str(home)).dispose()  # create the storages before several processes open them
    env = {**os.environ, "DAGSTER_HOME": str(home), "QPIPE_HOME": str(root / "qpipe"),
           "QPIPE_SYNTHETIC_INSTRUMENTS": "120"}
    _launch(env, "group:ingest", ("2023-07-03", FEATURES[1]))  # LOOKBACK sessions before FEATURES
    _launch(env, "group:features", FEATURES)
    return env, root / "qpipe", _work_seconds(home, "feature_tables", "rows for")


def _work_seconds(home: Path, step: str, done: str) -> float:
    """Seconds from the step's start to its log line ``done`` (written after the commit), in the last run."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_records_for_run(instance.get_runs(limit=1)[0].run_id).records
    entries = [r.event_log_entry for r in records if r.event_log_entry.step_key == step]
    start = next(e.timestamp for e in entries if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_START)
    return next(e.timestamp for e in entries if done in (e.user_message or "")) - start


def _args(assets: str, days, config: dict | None) -> list[str]:
    flag, value = (("--partition", days) if isinstance(days, str) else ("--partition-range", "...".join(days)))
    return [str(BIN / "dg"), "launch", "--assets", assets, flag, value,
            *(["--config-json", json.dumps(config)] if config else [])]


def _launch(env: dict, assets: str, days, config: dict | None = None) -> None:
    done = subprocess.run(_args(assets, days, config), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def _kill_during(env: dict, assets: str, days, step: str, after: float | str, config: dict | None = None) -> list[str]:
    """Launch, wait until ``step`` has run ``after`` seconds (or logged a line containing ``after``), SIGKILL all;
    returns the step's log lines written before the kill. A run that succeeded before ``after`` seconds (the step
    took less time than in the fixture's run) is not killed: its lines, the commit's among them, are returned, and
    the caller tries again sooner."""
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    known = {r.run_id for r in instance.get_runs()}
    process = subprocess.Popen(_args(assets, days, config), cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, started = time.monotonic() + 300, None
    while time.monotonic() < deadline and process.poll() is None:
        runs = [r for r in instance.get_runs() if r.run_id not in known]
        records = instance.get_records_for_run(runs[0].run_id).records if runs else []
        for record in records:
            entry = record.event_log_entry
            if entry.step_key != step:
                continue
            if entry.dagster_event and entry.dagster_event.event_type == DagsterEventType.STEP_START:
                started = started or time.monotonic()
            if isinstance(after, str) and after in (entry.user_message or ""):
                started = -1.0
        if started == -1.0 or (started and isinstance(after, float) and time.monotonic() - started >= after):
            break
        time.sleep(0.05)
    if process.poll() is not None:  # ended by itself: a success has committed; anything else is a failure to show
        assert isinstance(after, float) and process.returncode == 0, \
            f"the run ended (exit code {process.returncode}) before it could be killed"
    else:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    gone = time.monotonic() + 30
    while time.monotonic() < gone:  # every process of the group, not only its leader, has exited
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    # Read again now that nothing writes: the loop's last read can miss lines written just before the kill or the end.
    runs = [r for r in instance.get_runs() if r.run_id not in known]
    records = instance.get_records_for_run(runs[0].run_id).records if runs else []
    lines = [r.event_log_entry.user_message for r in records if r.event_log_entry.step_key == step]
    instance.dispose()
    return lines


def _snapshot(warehouse: Path, table: str, where: str) -> tuple:
    with duckdb.connect(str(warehouse), read_only=True) as con:  # it opens: the WAL of a dead writer is replayed
        return con.execute(f"SELECT count(*), sum(hash(t)) FROM {table} t WHERE {where}").fetchall()[0]


@pytest.mark.parametrize("share", [0.3, 0.85])  # of the step's time to its commit: computing, then writing
def test_a_feature_write_killed_leaves_the_days_as_they_were(site, share):
    env, home, work = site
    where = f"date BETWEEN '{FEATURES[0]}' AND '{FEATURES[1]}'"
    before = {t: _snapshot(home / "warehouse.duckdb", t, where) for t in ("features.alpha158", "features.alpha360")}
    assert before["features.alpha158"][0] > 10_000
    for attempt in range(4):  # a kill that came after the commit proves nothing: again, sooner
        seen = _kill_during(env, "features/alpha158,features/alpha360", FEATURES, "feature_tables",
                            share * work / 2**attempt)
        if not any("rows for" in line for line in seen):
            break
    assert not any("rows for" in line for line in seen), "every kill came after the commit"
    assert {t: _snapshot(home / "warehouse.duckdb", t, where) for t in before} == before
    _launch(env, "features/alpha158,features/alpha360", FEATURES)  # a rerun succeeds, and writes the same rows
    assert {t: _snapshot(home / "warehouse.duckdb", t, where) for t in before} == before


def test_a_training_step_killed_mid_epoch_leaves_no_checkpoint(site):
    env, home, _ = site
    long = {"ops": {"models__mlp_checkpoint": {"config": {"train_days": 60, "valid_days": 20,
                                                          "params": {"n_epochs": 500, "batch_size": 256}}}}}
    _kill_during(env, "models/mlp_checkpoint", DAY, "models__mlp_checkpoint", "epoch 2/500 done", long)
    folder = home / "checkpoints" / "mlp"
    assert not folder.exists() or not any(p.suffix in (".safetensors", ".json") for p in folder.iterdir())
    quick = {"ops": {"models__mlp_checkpoint": {"config": {"train_days": 60, "valid_days": 20,
                                                           "params": {"n_epochs": 2, "batch_size": 256}}}}}
    _launch(env, "models/mlp_checkpoint", DAY, quick)
    assert load_checkpoint(folder / DAY).config.model == "mlp"


def test_a_predictions_write_killed_leaves_the_scores_as_they_were(site):
    env, home, _ = site
    if not (home / "checkpoints" / "mlp" / f"{DAY}.json").exists():
        _launch(env, "models/mlp_checkpoint", DAY, {"ops": {"models__mlp_checkpoint": {"config": {
            "train_days": 60, "valid_days": 20, "params": {"n_epochs": 2, "batch_size": 256}}}}})
    _launch(env, "predictions/mlp_predictions", SCORED)
    work = _work_seconds(Path(env["DAGSTER_HOME"]), "predictions__mlp_predictions", "scores for")
    where = f"model = 'mlp' AND date BETWEEN '{SCORED[0]}' AND '{SCORED[1]}'"
    before = _snapshot(home / "warehouse.duckdb", "predictions.scores", where)
    assert before[0] > 1000
    for attempt in range(4):
        seen = _kill_during(env, "predictions/mlp_predictions", SCORED, "predictions__mlp_predictions",
                            0.7 * work / 2**attempt)
        if not any("scores for" in line for line in seen):
            break
    assert not any("scores for" in line for line in seen), "every kill came after the commit"
    assert _snapshot(home / "warehouse.duckdb", "predictions.scores", where) == before
    _launch(env, "predictions/mlp_predictions", SCORED)
    assert _snapshot(home / "warehouse.duckdb", "predictions.scores", where) == before
