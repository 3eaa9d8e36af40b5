"""A team deployment as the README describes it: PostgreSQL instance storage (deploy/postgres/dagster.yaml),
``dagster-webserver`` and ``dagster-daemon`` as separate processes bound to loopback, on a small embedded market."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg

from qpipe.deploy.postgres import LocalPostgres
from qpipe.deploy.servers import free_port
from qpipe_tests.conftest import REPO

BIN = Path(sys.executable).parent
LOCATION = {"repositoryLocationName": "qpipe", "repositoryName": "__repository__"}


class Deployment:
    def __init__(self, root: Path, postgres: LocalPostgres, **settings: str):
        self.root, self.home = root, root / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copy(REPO / "deploy" / "postgres" / "dagster.yaml", self.home / "dagster.yaml")
        self.env = {**os.environ, **postgres.env, "DAGSTER_HOME": str(self.home), "QPIPE_HOME": str(root / "qpipe"),
                    "PYTHONUNBUFFERED": "1", **settings}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self._saved_env = {k: os.environ.get(k) for k in postgres.env}  # put back by stop()
        os.environ.update(postgres.env)  # this process's view of the same instance
        self.instance = dg.DagsterInstance.from_config(str(self.home))  # creates the schema before the services start

    def _start(self, name: str, *command: str) -> None:
        log = open(self.root / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(list(command), cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start_webserver(self, timeout: float = 180) -> None:
        self._start("webserver", str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                    "-p", str(self.port))
        deadline = time.monotonic() + timeout
        while True:
            try:
                entries = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries "
                                       "{ name loadStatus } } } }")["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    return
            except OSError:
                pass
            if self.processes["webserver"].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the webserver did not load qpipe:\n{self.log('webserver')[-3000:]}")
            time.sleep(1)

    def start_daemon(self) -> None:
        self._start("daemon", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml")

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def graphql(self, query: str, **variables) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def wait_for_runs(self, filters: dg.RunsFilter, count: int, timeout: float) -> list[dg.DagsterRun]:
        """Wait until ``count`` runs match and all of them have finished; fail with the daemon's log otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.instance.get_runs(filters)
            if len(runs) >= count and all(run.is_finished for run in runs):
                return runs
            if time.monotonic() > deadline or self.processes["daemon"].poll() is not None:
                raise AssertionError(f"{len(runs)} of {count} runs ({[r.status.value for r in runs]}) after {timeout}s; "
                                     f"daemon log:\n{self.log('daemon')[-4000:]}")
            time.sleep(2)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.instance.dispose()
        for key, value in self._saved_env.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
