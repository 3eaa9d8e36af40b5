"""The daily pipeline through two Celery workers on a Redis broker, as a multi-machine deployment runs it.

A real Redis server on loopback, two real ``celery`` workers of qpipe.deploy.celery_app (one on the
``dagster`` queue, one on ``gpu``), and ``dg launch`` of the daily_pipeline job with QPIPE_EXECUTOR=celery:
every step is a Celery task, checkpoints go to the ``gpu`` worker by their tag. The warehouse is the DuckDB
file, or (``-m lake``, with the lake extra) a DuckLake that the workers share without any DuckDB file: its
catalog on a real PostgreSQL server on loopback, its Parquet files in a folder, the history imported from the
DuckDB file. The tables and checkpoints come out identical to the same day's run by the in-process executor
on the DuckDB file.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.events import DagsterEventType

from qpipe.data import lake
from qpipe.deploy.postgres import LocalPostgres
from qpipe.deploy.redis import LocalRedis
from qpipe.resources import Warehouse
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


def _day_run(history: Path, root: Path, env_extra: dict, run_config: dict, with_file: bool = True) -> dict:
    """The day's run on a copy of the history's QPIPE_HOME (without its DuckDB file when the run uses a lake)."""
    shutil.copytree(history, root / "qpipe", ignore=None if with_file else shutil.ignore_patterns("*.duckdb*"))
    env = _env(root, **env_extra)
    _launch(env, "--assets", SELECTION, "--partition", DAY, "--config-json", json.dumps(run_config))
    return env


def _contents(qpipe_home: Path, warehouse: Warehouse | None = None) -> dict:
    with (warehouse.get_connection() if warehouse else duckdb.connect(str(qpipe_home / "warehouse.duckdb"),
                                                                      read_only=True)) as con:
        tables = {t: con.execute(f"SELECT count(*), sum(hash(t)) FROM {t} t").fetchall()[0] for t in TABLES}
    weights = {p.relative_to(qpipe_home).as_posix(): p.read_bytes()
               for p in sorted((qpipe_home / "checkpoints").rglob("*.safetensors"))}
    return {"tables": tables, "weights": weights}


@contextmanager
def _warehouse(kind: str, history: Path, root: Path) -> Iterator[tuple[dict[str, str], Warehouse | None]]:
    """The Celery run's warehouse: a copy of the history's DuckDB file, or a lake on a PostgreSQL server on loopback
    with the history imported (QPIPE_LAKE's environment variables, and the resource to read it back)."""
    if kind == "file":
        yield {}, None
        return
    with LocalPostgres() as postgres:
        on_lake = {"QPIPE_LAKE": f"postgres:{postgres.libpq()}", "QPIPE_LAKE_DATA": str(root / "lake")}
        warehouse = Warehouse(database=str(root / "never.duckdb"), lake=on_lake["QPIPE_LAKE"],
                              lake_data=on_lake["QPIPE_LAKE_DATA"])
        with warehouse.get_connection() as con:
            lake.import_file(con, str(history / "warehouse.duckdb"))
        yield on_lake, warehouse


@pytest.mark.parametrize("kind", ["file", pytest.param("lake", marks=pytest.mark.lake)])
def test_the_daily_pipeline_on_two_celery_workers_equals_the_in_process_run(history, tmp_path, kind):
    in_process = tmp_path / "in_process"
    _day_run(history, in_process, {}, {**QUICK, "execution": {"config": {"in_process": {}}}})

    celery = tmp_path / "celery"
    with LocalRedis() as redis, _warehouse(kind, history, celery) as (on_lake, warehouse):
        env = _env(celery, QPIPE_EXECUTOR="celery", QPIPE_CELERY_BROKER=redis.url, **on_lake)
        workers = [subprocess.Popen([str(BIN / "celery"), "-A", "qpipe.deploy.celery_app", "worker", "-Q", queue,
                                     "-c", "1", "-n", f"{queue}@qpipe", "--without-gossip", "--without-mingle"],
                                    cwd=REPO, env=env, stdout=open(tmp_path / f"{queue}.log", "w"),
                                    stderr=subprocess.STDOUT)
                   for queue in ("dagster", "gpu")]
        try:
            _day_run(history, celery, {"QPIPE_EXECUTOR": "celery", "QPIPE_CELERY_BROKER": redis.url, **on_lake}, QUICK,
                     with_file=kind == "file")
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=60)
        on_celery = _contents(celery / "qpipe", warehouse)

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

    if kind == "lake":
        assert not list(celery.rglob("*.duckdb"))  # the workers wrote the lake: no DuckDB file was made
    assert on_celery == _contents(in_process / "qpipe")
