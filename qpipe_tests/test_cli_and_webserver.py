"""The documented command lines work (dg launch, and dagster asset materialize, which users asked to keep), and
their runs are visible in the UI that ``dg dev`` serves."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from qpipe_tests.conftest import REPO

BIN = Path(sys.executable).parent
DAY, OTHER_DAY = "2024-12-30", "2024-12-31"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


@pytest.fixture
def dagster_home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "QPIPE_HOME": str(tmp_path / "qpipe"),
           "QPIPE_SYNTHETIC_INSTRUMENTS": "40"}
    return home, env


@pytest.mark.slow
def test_cli_materialize_then_the_runs_show_in_dg_dev(dagster_home, tmp_path):
    home, env = dagster_home
    launch = subprocess.run([str(BIN / "dg"), "launch", "--assets", "raw/prices", "--partition", DAY],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert "Warning" not in launch.stderr + launch.stdout  # no notice the user did not cause
    cli = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "qpipe.definitions",
                          "--select", "raw/prices", "--partition", OTHER_DAY],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    with duckdb.connect(str(tmp_path / "qpipe" / "warehouse.duckdb"), read_only=True) as con:
        days = [d.isoformat() for (d,) in con.execute("SELECT DISTINCT date FROM raw.prices ORDER BY 1").fetchall()]
    assert days == [DAY, OTHER_DAY]
    assert (home / "history" / "runs.db").exists()  # persistent sqlite storage under DAGSTER_HOME

    port = _free_port()
    server = subprocess.Popen([str(BIN / "dg"), "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                location = _graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries "
                                          "{ name loadStatus } } } }")["workspaceOrError"]["locationEntries"]
                if location and location[0]["loadStatus"] == "LOADED":
                    break
            except OSError:
                pass
            assert time.time() < deadline, "dg dev did not load the qpipe location"
            time.sleep(1)
        assert location[0]["name"] == "qpipe"
        runs = _graphql(port, "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
                        )["runsOrError"]["results"]
        # The command lines' runs; dg dev's daemon runs the after-close schedule, so a test that spans 17:30 New York
        # on a session meets that day's run too (and the sensors may launch theirs): those are not looked at here.
        daemons = {r["runId"] for r in runs if {t["key"] for t in r["tags"]} & {"dagster/schedule_name",
                                                                                 "dagster/sensor_name"}}
        ours = [r for r in runs if r["runId"] not in daemons]
        assert [r["status"] for r in ours] == ["SUCCESS", "SUCCESS"], runs
        asset = _graphql(port, '{ assetOrError(assetKey: {path: ["raw", "prices"]}) { ... on Asset { '
                               'assetMaterializations { partition runId } } } }')
        materialized = [m for m in asset["assetOrError"]["assetMaterializations"] if m["runId"] not in daemons]
        assert sorted(m["partition"] for m in materialized) == [DAY, OTHER_DAY]
        assert {m["runId"] for m in materialized} == {r["runId"] for r in ours}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_a_holiday_partition_on_the_command_line_is_refused_before_anything_runs(dagster_home, tmp_path):
    """Dagster's CLI checks the partition key itself, before qpipe's code runs: its message is generic, so the README
    names it with the command that lists the sessions. Nothing is written."""
    home, env = dagster_home
    cli = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "qpipe.definitions",
                          "--select", "raw/prices", "--partition", "2024-12-25"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode != 0 and "containing the passed partition key `2024-12-25`" in cli.stderr, cli.stderr[-2000:]
    assert not (tmp_path / "qpipe" / "warehouse.duckdb").exists() and not (home / "storage").exists()
    sessions = subprocess.run([sys.executable, "-m", "qpipe.cadence", "2024-12-23", "2024-12-27", "--every", "daily"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert sessions.returncode == 0 and "2024-12-24" in sessions.stdout and "2024-12-25" not in sessions.stdout
