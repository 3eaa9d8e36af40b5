"""Runs launched the way the Dagster UI launches them: through a code server and the run launcher.

``python -m qpipe.main`` starts a code server for ``qpipe.definitions`` and launches each of its
runs through the instance's run launcher. A run then has a run worker process of its own, its
events land in the instance's event log (where ``qpipe.console`` follows them), and it can be
terminated from the UI, or with ``instance.run_coordinator.cancel_run``, like any run the UI
started. (A run executed in the calling process, ``execute_in_process``, cannot: the UI answers
"Unable to get grpc client" and the run stays CANCELING.)

Runs are launched at once, not queued: the caller decides their order. This is the only module
that uses Dagster's workspace API (dagster 1.13 is pinned).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import GrpcServerTarget
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.server import wait_for_grpc_server

from qpipe.freshness import checks_but_freshness

LOCATION = "qpipe"
MODULE = "qpipe.definitions"
REPOSITORY = "__repository__"
HEARTBEAT_TIMEOUT = 60  # seconds without a heartbeat after which the code server stops itself


class CodeServer:
    """A running code server for the qpipe location, and the instance whose runs it launches."""

    def __init__(self, instance: dg.DagsterInstance, context: WorkspaceProcessContext):
        self.instance = instance
        self._context = context

    def launch(self, job_name: str, asset_keys: Sequence[str], *, tags: Mapping[str, str] | None = None,
               run_config: Mapping | None = None) -> str:
        """Create a run of ``job_name`` for ``asset_keys`` (user strings such as "raw/prices") and launch it."""
        workspace = self._context.create_request_context()
        location = workspace.get_code_location(LOCATION)
        repository = location.get_repository(REPOSITORY)
        keys = frozenset(dg.AssetKey.from_user_string(key) for key in asset_keys)
        checks = checks_but_freshness(repository.asset_graph, keys)
        job = location.get_job(JobSubsetSelector(location_name=LOCATION, repository_name=repository.name,
                                                 job_name=job_name, op_selection=None, asset_selection=keys,
                                                 asset_check_selection=checks))
        config = dict(run_config or {})
        plan = location.get_execution_plan(job, config, step_keys_to_execute=None, known_state=None,
                                           instance=self.instance).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job.name, run_id=None, run_config=config, status=None, tags={**job.tags, **(tags or {})},
            root_run_id=None, parent_run_id=None, step_keys_to_execute=plan.step_keys_to_execute,
            execution_plan_snapshot=plan, job_snapshot=job.job_snapshot, parent_job_snapshot=job.parent_job_snapshot,
            asset_selection=keys, asset_check_selection=checks, resolved_op_selection=job.resolved_op_selection,
            op_selection=None, remote_job_origin=job.get_remote_origin(), job_code_origin=job.get_python_origin(),
            asset_graph=repository.asset_graph)
        self.instance.launch_run(run.run_id, workspace)
        return run.run_id

    def cancel(self, run_id: str) -> bool:
        """Terminate a run as the UI's Terminate button does."""
        return bool(self.instance.run_coordinator.cancel_run(run_id))


@contextmanager
def code_server(instance: dg.DagsterInstance, log_file: Path, working_directory: str | Path | None = None
                ) -> Iterator[CodeServer]:
    """Start a code server for qpipe.definitions for the duration of the block.

    The server is a ``dagster api grpc`` process in a process group of its own: the run workers and
    step processes it starts inherit that group, so a terminal's Ctrl-C (sent to its foreground
    group) reaches only the caller, which cancels its run through the instance; the run then ends
    CANCELED with its steps cleaned up instead of its steps failing half-way on the signal. Their
    console output goes to ``log_file`` (the events themselves go to the instance's event log). The
    server shuts itself down a minute after the caller stops sending heartbeats (a killed caller).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    socket_dir = tempfile.mkdtemp(prefix="qpipe-grpc-")
    socket = os.path.join(socket_dir, "server.sock")
    command = [sys.executable, "-m", "dagster", "api", "grpc", "--module-name", MODULE, "--location-name", LOCATION,
               "--working-directory", str(working_directory or os.getcwd()), "--socket", socket,
               "--use-python-environment-entry-point", "--heartbeat", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
    client = DagsterGrpcClient(socket=socket)
    stop_heartbeats = threading.Event()
    try:
        wait_for_grpc_server(process, client, command, timeout=120,
                             additional_timeout_msg=f"Its console output is in {log_file}. ")
        threading.Thread(target=_heartbeats, args=(client, stop_heartbeats), daemon=True).start()
        target = GrpcServerTarget(host="localhost", port=None, socket=socket, location_name=LOCATION)
        with WorkspaceProcessContext(instance, target, read_only=False) as context:
            yield CodeServer(instance, context)
    finally:
        stop_heartbeats.set()
        _shut_down(process, client)
        shutil.rmtree(socket_dir, ignore_errors=True)



def _heartbeats(client: DagsterGrpcClient, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_TIMEOUT / 6):
        try:
            client.heartbeat()
        except Exception:  # a server busy starting a run answers late; the next beat will do
            pass


def _shut_down(process: subprocess.Popen, client: DagsterGrpcClient) -> None:
    """Ask the server to stop, else terminate it; a run it launched (Ctrl-C twice) goes on, for the UI to stop."""
    if process.poll() is None:
        try:
            client.shutdown_server()
            process.wait(timeout=30)
        except Exception:
            with suppress(ProcessLookupError):
                process.terminate()
            process.wait(timeout=30)
