"""Runs whose process is gone: found, failed with a reason, and their pool slots freed.

A run worker killed with SIGKILL (or lost with its machine) cannot report its own end: Dagster
keeps the run STARTED and its ``duckdb``/``gpu`` pool slots claimed, and every later run that
needs the pool waits forever. The daemon's run monitoring does not see it either, because the
default run launcher cannot check a worker's health. So qpipe checks: a STARTED (or CANCELING)
run whose worker process no longer exists on this machine is dead. The worker is the process
that reported the run's start (its RUN_START event carries the pid); a process with that pid that
started after the run did is another process.

A run that has ended can still hold pool claims: when Dagster itself fails a run whose worker was
SIGKILLed (the code server's run worker, under the daemon), the slots and the pending steps of its
pools stay claimed, and the run queue waits behind them forever while the pool reads "0 / 1 slots
occupied". ``reap`` frees the claims of every ended run as well.

A run can also be created and never launched: ``dg launch`` (or a script) killed between the two leaves it
NOT_STARTED forever, and Dagster shows its assets as materializing and keeps automation off them. One
still not launched ``UNLAUNCHED_AFTER`` after its creation (its command launches it within seconds) is
failed with that reason.

A step process outlives its run worker when only the worker is killed (``kill -9`` of ``dg launch``): forked from
the worker (through the forkserver), it would go on training and write its checkpoint into a run already failed,
and then hang on the dead worker's pipes. ``die_with_the_run`` makes each step of a run launched here watch its
worker and end, with its own children, within a second of it.

``reap`` runs when the definitions load (every `dg launch`, `dagster asset materialize`, run
worker and code server, so a new run never waits behind a dead one), from the ``reap_dead_runs``
sensor every 30 s under the daemon, and before the main job's runs. Runs are looked at for a lost process only
where they are launched on this machine (the default run launcher); runs never launched, on every instance.
"""

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.launcher import DefaultRunLauncher

ALIVE = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
ENDED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
UNLAUNCHED_AFTER = 600.0  # seconds a run may stay NOT_STARTED before it is taken as never to be launched
WATCH_SECONDS = 1.0  # how often a step process looks for its run worker
log = logging.getLogger("qpipe.reaper")


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pid: int
    started: float  # the run's start, seconds since the epoch
    pools: tuple[str, ...]  # the pools whose slots it held

    def reason(self) -> str:
        held = f"; it held pool slots of {', '.join(self.pools)}, now freed" if self.pools else ""
        return (f"qpipe: the process of this run (pid {self.pid} on {socket.gethostname()}) is gone, killed or "
                f"crashed without reporting its end{held}. Marked failed so that other runs can go on; "
                "re-execute it to redo its work.")


def _start_ticks(pid: int) -> int | None:
    """Process ``pid``'s start, in clock ticks since boot (which no later process of that pid shares); None when
    there is none, or only its zombie (killed, and not yet reaped by a parent that waits on its pipes); -1 where
    /proc cannot tell."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return -1
    return None if fields[0] == "Z" else int(fields[19])


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when there is no such process."""
    ticks = _start_ticks(pid)
    if ticks is None or ticks < 0:
        return None if ticks is None else 0.0  # 0.0: alive; its start time is unknown here (no /proc)
    try:
        with open("/proc/stat") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def find_dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return []  # runs may live on other machines: their pids mean nothing here
    dead = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(ALIVE))):
        worker = run_worker(instance, run.run_id)
        if worker is None:
            continue  # not started yet: Dagster's own start timeout covers STARTING runs
        pid, started = worker
        began = _process_started(pid)
        if began is not None and began <= started + 1.0:
            continue  # the run's own process, still there (not a later one of its pid)
        dead.append(DeadRun(run.run_id, run.job_name, pid, started, _claims(instance).get(run.run_id, ())))
    return dead


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the process that reported the run's start, and when (None before it started)."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START, limit=1, ascending=False).records
    if not records or records[0].event_log_entry.dagster_event is None:
        return None
    entry = records[0].event_log_entry
    pid = entry.dagster_event.pid
    return None if pid is None else (pid, entry.timestamp)


def _ancestors() -> list[int]:
    """This process's parent, its parent's, ... (from /proc; empty where there is none)."""
    chain, pid = [], os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def _kill_descendants(pid: int) -> None:
    """SIGKILL the children of ``pid``, and theirs (a step's torchrun, a DataLoader's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            for child in map(int, children.read().split()):
                _kill_descendants(child)
                os.kill(child, signal.SIGKILL)
    except (OSError, ValueError):
        pass


_watching: set[str] = set()


def die_with_the_run(instance: dg.DagsterInstance | None, run_id: str | None) -> None:
    """In a step process forked from its run's worker on this machine: end this process, and its children, when
    the worker is gone. (A step run in the worker itself, as ``materialize`` runs it, or by a Celery worker, has
    no such worker above it, and nothing is watched.)"""
    if instance is None or not run_id or run_id in _watching:
        return
    worker = run_worker(instance, run_id)
    if worker is None or worker[0] in (1, os.getpid()) or worker[0] not in _ancestors():
        return
    pid = worker[0]
    ticks = _start_ticks(pid)  # an ancestor: the worker itself, so its start is compared, not the clock's time
    _watching.add(run_id)

    def watch() -> None:
        while _start_ticks(pid) == ticks:
            time.sleep(WATCH_SECONDS)
        print(f"qpipe: the worker of run {run_id} (pid {pid}) is gone: this step (pid {os.getpid()}) ends with it, "
              "writing nothing more", file=sys.stderr, flush=True)
        _kill_descendants(os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=f"qpipe-watch-run-{run_id[:8]}", daemon=True).start()


def _claims(instance: dg.DagsterInstance) -> dict[str, tuple[str, ...]]:
    """Run id -> the pools in which it holds a slot or waits for one."""
    storage = instance.event_log_storage
    claims: dict[str, set[str]] = {}
    for info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).values():
        for claim in (*info.claimed_slots, *info.pending_steps):
            claims.setdefault(claim.run_id, set()).add(info.concurrency_key)
    return {run_id: tuple(sorted(pools)) for run_id, pools in claims.items()}


@dataclass(frozen=True)
class Reaped:
    dead: list[DeadRun]  # runs whose process was gone: failed, their claims freed
    freed: dict[str, tuple[str, ...]]  # ended runs whose pool claims were left behind -> those pools, freed
    unlaunched: list[str]  # runs created and never launched: failed

    def describe(self) -> str:
        dead = f"reaped {len(self.dead)} dead run(s): {', '.join(r.run_id for r in self.dead)}" if self.dead else ""
        freed = (f"freed the pool claims of {len(self.freed)} ended run(s): {', '.join(self.freed)}"
                 if self.freed else "")
        unlaunched = (f"failed {len(self.unlaunched)} run(s) never launched: {', '.join(self.unlaunched)}"
                      if self.unlaunched else "")
        return "; ".join(part for part in (dead, freed, unlaunched) if part) or "no dead runs"

    def lines(self) -> list[str]:
        """What a console says of it, a line a run."""
        return ([f"run {d.run_id[:8]} had lost its process (pid {d.pid}, job {d.job_name}): marked failed, its pool "
                 "slots freed" for d in self.dead]
                + [f"run {run_id[:8]} had ended still holding claims in pool {', '.join(pools)}: freed"
                   for run_id, pools in self.freed.items()]
                + [f"run {run_id[:8]} was created and never launched: marked failed" for run_id in self.unlaunched])


def free_ended_claims(instance: dg.DagsterInstance) -> dict[str, tuple[str, ...]]:
    """Free the pool slots and pending steps of runs that have ended (or are gone): run id -> pools."""
    freed = {}
    for run_id, pools in _claims(instance).items():
        run = instance.get_run_by_id(run_id)
        if run is None or run.status in ENDED:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            log.warning(f"run {run_id} had ended ({run.status.value if run else 'deleted'}) still holding claims in "
                        f"pool {', '.join(pools)}: freed")
            freed[run_id] = pools
    return freed


def fail_unlaunched_runs(instance: dg.DagsterInstance, after: float = UNLAUNCHED_AFTER) -> list[str]:
    """Fail the runs still NOT_STARTED ``after`` seconds after their creation: their run ids."""
    created_before = datetime.now(timezone.utc) - timedelta(seconds=after)
    failed = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.NOT_STARTED],
                                                                 created_before=created_before)):
        run = record.dagster_run
        minutes = (datetime.now(timezone.utc) - record.create_timestamp).total_seconds() / 60
        instance.report_run_failed(run, (
            f"qpipe: this run was created {minutes:.0f} min ago and never launched: the command that created it "
            "(dg launch, dagster asset materialize, a script) stopped before launching it. Marked failed so that its "
            "assets no longer show as materializing; launch it again to do its work."))
        log.warning(f"run {run.run_id} ({run.job_name}) was created {minutes:.0f} min ago and never launched: "
                    "marked failed")
        failed.append(run.run_id)
    return failed


def reap(instance: dg.DagsterInstance, unlaunched_after: float = UNLAUNCHED_AFTER) -> Reaped:
    """Fail every dead run with the reason in its log and free its pool claims, and those of ended runs; fail the
    runs never launched."""
    dead = find_dead_runs(instance)
    for run in dead:
        record = instance.get_run_by_id(run.run_id)
        if record is None or record.status not in ALIVE:
            continue
        if record.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(record, run.reason())  # it was being stopped anyway
        else:
            instance.report_run_failed(record, run.reason())
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log.warning(f"run {run.run_id} ({run.job_name}) had no process any more (pid {run.pid}); "
                    f"marked failed{' and freed its slots of ' + ', '.join(run.pools) if run.pools else ''}")
    return Reaped(dead, free_ended_claims(instance), fail_unlaunched_runs(instance, unlaunched_after))


def reap_on_load() -> None:
    """What the definitions call when they load: reap if there is a persistent instance; never fail the load."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    began = time.monotonic()
    try:
        with dg.DagsterInstance.get() as instance:
            reap(instance)
    except Exception as error:  # a check that cannot run must not stop the code location from loading
        log.warning(f"could not check for dead runs: {error}")
    log.debug(f"dead-run check in {time.monotonic() - began:.3f}s")


@dg.sensor(name="reap_dead_runs", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every 30 s: runs whose process is gone (SIGKILL, a crash) are failed and their pool slots "
                       "freed, so that no run waits behind them; so are runs created 10 min ago and never launched "
                       "(qpipe.reaper).")
def reap_dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    return dg.SkipReason(reap(context.instance).describe())
