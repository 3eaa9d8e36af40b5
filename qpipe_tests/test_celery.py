"""The daily pipeline through two Celery workers on a Redis broker, as a multi-machine deployment runs it.

A real Redis server on loopback, two real ``celery`` workers of qpipe.deploy.celery_app (one on the
``dagster`` queue, one on ``gpu``), and ``dg launch`` of the daily_pipeline job with QPIPE_EXECUTOR=celery:
every step is a Celery task, checkpoints go to the ``gpu`` worker by their tag, and the warehouse and
checkpoints come out identical to the same day's run by the in-process executor.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.events import DagsterEventType

from qpipe.deploy.redis import LocalRedis
from qpipe_tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DAY = "2024-03-28"
HISTORY = ("2023-07-03", "2024-03-27")  # the checkpoint's 60 + 20 sessions of labels, and their lookback
# The daily pipeline's assets for two models (the schedule's run with QPIPE_MODELS=mlp,gru)
SELECTION = ("group:ingest or group:features or ((group:models or group:predictions or group:reports) "
             "and (tag:qpipe/arch=mlp or tag:qpipe/arch=gru))")
TABLES = ("raw.prices", "features.alpha158", "features.alpha360", "features.label", "predictions.scores")


def _env(root: Path, **extra: str) -> dict[str, str]:
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    dg.DagsterInstance.from_config(str(home)).dispose()  # create the storages before several processes open them
    return {**os.environ, "DAGSTER_HOME": str(home), "QPIPE_HOME": str(root / "qpipe"),
            "QPIPE_SYNTHETIC_INSTRUMENTS": "40", **extra}


def _launch(env: dict, *args: str) -> None:
    done = subprocess.run([str(BIN / "dg"), "launch", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


QUICK = {"ops": {f"models__{arch}_checkpoint": {"config": {"train_days": 60, "valid_days": 20,
                                                           "params": {"n_epochs": 2, "batch_size": 256}}} for arch in ("mlp", "gru")}}


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """A QPIPE_HOME holding the history the day's run reads: prices, universe, features and labels."""
    root = tmp_path_factory.mktemp("history")
    env = _env(root)
    _launch(env, "--assets", "group:ingest", "--partition-range", "...".join(HISTORY))
    _launch(env, "--assets", "group:features", "--partition-range", "...".join(HISTORY))
    return root / "qpipe"


def _day_run(history: Path, root: Path, env_extra: dict, run_config: dict) -> dict:
    shutil.copytree(history, root / "qpipe")
    env = _env(root, **env_extra)
    _launch(env, "--assets", SELECTION, "--partition", DAY, "--config-json", json.dumps(run_config))
    return env


def _contents(qpipe_home: Path) -> dict:
    with duckdb.connect(str(qpipe_home / "warehouse.duckdb"), read_only=True) as con:
        tables = {t: con.execute(f"SELECT count(*), sum(hash(t)) FROM {t} t").fetchall()[0] for t in TABLES}
    weights = {p.relative_to(qpipe_home).as_posix(): p.read_bytes()
               for p in sorted((qpipe_home / "checkpoints").rglob("*.safetensors"))}
    return {"tables": tables, "weights": weights}


def test_the_daily_pipeline_on_two_celery_workers_equals_the_in_process_run(history, tmp_path):
    in_process = tmp_path / "in_process"
    _day_run(history, in_process, {}, {**QUICK, "execution": {"config": {"in_process": {}}}})

    celery = tmp_path / "celery"
    with LocalRedis() as redis:
        env = _env(celery, QPIPE_EXECUTOR="celery", QPIPE_CELERY_BROKER=redis.url)
        workers = [subprocess.Popen([str(BIN / "celery"), "-A", "qpipe.deploy.celery_app", "worker", "-Q", queue,
                                     "-c", "1", "-n", f"{queue}@qpipe", "--without-gossip", "--without-mingle"],
                                    cwd=REPO, env=env, stdout=open(tmp_path / f"{queue}.log", "w"),
                                    stderr=subprocess.STDOUT)
                   for queue in ("dagster", "gpu")]
        try:
            _day_run(history, celery, {"QPIPE_EXECUTOR": "celery", "QPIPE_CELERY_BROKER": redis.url}, QUICK)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=60)

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = instance.get_runs(limit=1)[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        records = instance.get_records_for_run(run.run_id).records
    ran_on = {}  # step -> the Celery worker that ran it (dagster-celery's engine event from inside the worker)
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event and event.event_type == DagsterEventType.ENGINE_EVENT else None
        if data and "Celery worker" in data.metadata:
            ran_on[record.event_log_entry.step_key] = data.metadata["Celery worker"].value
    checkpoints = {step for step in ran_on if step.endswith("_checkpoint")}
    assert checkpoints == {"models__mlp_checkpoint", "models__gru_checkpoint"}
    assert {ran_on[step] for step in checkpoints} == {"gpu@qpipe"}
    assert {ran_on[step] for step in set(ran_on) - checkpoints} == {"dagster@qpipe"}
    assert {"raw__prices", "feature_tables", "features__label", "predictions__mlp_predictions",
            "reports__gru_ic"} <= set(ran_on)

    assert _contents(celery / "qpipe") == _contents(in_process / "qpipe")
