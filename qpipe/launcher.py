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
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

LOCATION = "qpipe"
MODULE = "qpipe.definitions"
REPOSITORY = "__repository__"


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
        job = location.get_job(JobSubsetSelector(location_name=LOCATION, repository_name=repository.name,
                                                 job_name=job_name, op_selection=None, asset_selection=keys))
        config = dict(run_config or {})
        plan = location.get_execution_plan(job, config, step_keys_to_execute=None, known_state=None,
                                           instance=self.instance).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job.name, run_id=None, run_config=config, status=None, tags={**job.tags, **(tags or {})},
            root_run_id=None, parent_run_id=None, step_keys_to_execute=plan.step_keys_to_execute,
            execution_plan_snapshot=plan, job_snapshot=job.job_snapshot, parent_job_snapshot=job.parent_job_snapshot,
            asset_selection=keys, asset_check_selection=None, resolved_op_selection=job.resolved_op_selection,
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

    The server, and the run workers and step processes it starts, write their console output to
    ``log_file`` (the events themselves go to the instance's event log) and ignore SIGINT: Ctrl-C
    reaches only the caller, which cancels its run through the instance, so the run ends CANCELED
    with its steps cleaned up instead of dying half-way in every process of the terminal's group.
    """
    target = ModuleTarget(MODULE, None, str(working_directory or os.getcwd()), LOCATION)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited, like fds 1 and 2, by the server
    try:
        with open(log_file, "ab") as log:
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            context = WorkspaceProcessContext(instance, target, read_only=False)
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
        signal.signal(signal.SIGINT, previous)
    with context:
        yield CodeServer(instance, context)
