"""A run whose process was SIGKILLed no longer blocks the pools: found, failed with its reason, slots freed.

Found by a user: a SIGKILLed run stayed STARTED holding its ``duckdb`` slot, and every later run on
that DAGSTER_HOME waited forever. Here a real run in a process of its own holds the ``duckdb`` pool
of a real sqlite instance, is SIGKILLed, and then a new run comes (`dg launch`, no daemon) or the
daemon's sensor ticks.
"""

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType

from qpipe.console import RunView
from qpipe.reaper import reap, reap_dead_runs
from qpipe_tests.conftest import REPO

BIN = Path(sys.executable).parent
HOLDER = """
import threading
import time
import dagster as dg

@dg.asset(pool="duckdb")
def holds_the_warehouse():
    time.sleep(600)

dg.materialize([holds_the_warehouse], instance=dg.DagsterInstance.get())
"""


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    # Create the sqlite storages once, before several processes open them (two creating the schedule
    # database at once can leave it with two alembic heads).
    dg.DagsterInstance.from_config(str(home)).dispose()
    return home


def _env(home: Path) -> dict:
    return {**os.environ, "DAGSTER_HOME": str(home), "QPIPE_HOME": str(home.parent / "qpipe"),
            "QPIPE_SYNTHETIC_INSTRUMENTS": "30"}


def _holder(home: Path) -> tuple[subprocess.Popen, dg.DagsterInstance, str]:
    """A run in a process of its own that holds the duckdb pool's slot: (process, instance, its run id)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=_env(home), cwd=home.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = dg.DagsterInstance.from_config(str(home))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        claimed = instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots
        if claimed:
            break
        time.sleep(0.5)
    assert claimed, "the holder never claimed the duckdb slot"
    return holder, instance, claimed[0].run_id


def _killed_holder(home: Path) -> tuple[dg.DagsterInstance, str]:
    """A holder, SIGKILLed: (instance, its run id)."""
    holder, instance, run_id = _holder(home)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # what Dagster leaves behind
    return instance, run_id


def _assert_reaped(instance: dg.DagsterInstance, run_id: str) -> None:
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    failure = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert "the process of this run (pid" in failure[0].event_log_entry.dagster_event.message
    assert "held pool slots of duckdb, now freed" in failure[0].event_log_entry.dagster_event.message
    assert not [s for s in instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots
                if s.run_id == run_id]


def test_a_new_run_does_not_wait_behind_a_killed_one(home):
    instance, dead = _killed_holder(home)
    day = "2024-06-03"
    done = subprocess.run([str(BIN / "dg"), "launch", "--assets", "raw/prices", "--partition", day], cwd=REPO,
                          env=_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_reaped(instance, dead)
    succeeded = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert [r.tags.get("dagster/partition") for r in succeeded] == [day]
    # It did not wait: the dead run was failed and its slot freed before the new run's prices step asked for the
    # pool, so that step was never blocked by its limit (its asset check's step waits for it: the run's own turn).
    events = [r.event_log_entry for r in instance.get_records_for_run(succeeded[0].run_id).records]
    blocked = [e.step_key for e in events if (e.message or "").startswith("Step blocked by limit for pool")]
    assert "raw__prices" not in blocked, blocked
    reaped = instance.get_records_for_run(dead, of_type=DagsterEventType.RUN_FAILURE).records[0].event_log_entry
    started = next(e for e in events if e.step_key == "raw__prices" and e.dagster_event
                   and e.dagster_event.event_type == DagsterEventType.STEP_START)
    assert reaped.timestamp <= started.timestamp


def test_the_daemons_sensor_reaps_a_killed_run_and_leaves_live_ones(home):
    instance, dead = _killed_holder(home)
    result = reap_dead_runs(dg.build_sensor_context(instance=instance))
    assert f"reaped 1 dead run(s): {dead}" in str(result.skip_message)
    _assert_reaped(instance, dead)
    # a run whose process is alive (this one's, in-process) is left alone
    seen = {}

    @dg.asset
    def looks_around(context: dg.AssetExecutionContext):
        seen["skip"] = reap_dead_runs(dg.build_sensor_context(instance=context.instance)).skip_message

    assert dg.materialize([looks_around], instance=instance).success
    assert seen["skip"] == "no dead runs"


def test_a_run_already_waiting_says_for_what_and_goes_on_once_the_holder_is_killed(home):
    """The main job's console names the run a step waits behind, and checks it for a lost process every 10 s."""
    holder, instance, dead = _holder(home)
    waiting = subprocess.Popen([str(BIN / "dg"), "launch", "--assets", "raw/prices", "--partition", "2024-06-03"],
                               cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, blocked = time.monotonic() + 120, None
    while blocked is None and time.monotonic() < deadline:
        for run in instance.get_runs():
            if run.run_id != dead and any("Step blocked by limit for pool duckdb" in (r.event_log_entry.message or "")
                                          for r in instance.get_records_for_run(run.run_id).records):
                blocked = run.run_id
        time.sleep(0.5)
    assert blocked, "the second run never waited for the pool"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    out = io.StringIO()
    view = RunView(instance, blocked, out=out, every=1000.0)
    follower = threading.Thread(target=view.follow, daemon=True)
    follower.start()
    follower.join(timeout=120)
    assert not follower.is_alive(), out.getvalue()
    assert waiting.wait(timeout=60) == 0, waiting.stderr.read()[-3000:]
    text = out.getvalue()
    assert "waiting raw/prices" in text and f"for a slot of pool duckdb, held by run {dead[:8]}" in text, text
    assert f"run {dead[:8]} had lost its process" in text, text
    assert instance.get_run_by_id(blocked).status == dg.DagsterRunStatus.SUCCESS
    _assert_reaped(instance, dead)


def test_an_ended_run_that_still_holds_pool_claims_is_freed_so_the_queue_goes_on(home):
    """Found by a user: under the daemon, Dagster itself failed a run whose worker was SIGKILLed ("terminated by
    signal 9"), but left its duckdb slot and pending steps claimed; the retry and every later run stayed QUEUED
    while the pool read "0 / 1 slots occupied"."""
    instance, ended = _killed_holder(home)
    storage = instance.event_log_storage
    storage.claim_concurrency_slot("duckdb", ended, "a_check_still_waiting")  # pending: the one slot is taken
    instance.report_run_failed(instance.get_run_by_id(ended), "Run execution process was terminated by signal 9")
    info = storage.get_concurrency_info("duckdb")
    assert {s.run_id for s in info.claimed_slots} == {s.run_id for s in info.pending_steps} == {ended}
    result = reap_dead_runs(dg.build_sensor_context(instance=instance))
    assert result.skip_message == f"freed the pool claims of 1 ended run(s): {ended}"
    info = storage.get_concurrency_info("duckdb")
    assert info.claimed_slots == [] and info.pending_steps == []
    assert instance.get_run_by_id(ended).status == dg.DagsterRunStatus.FAILURE  # (Dagster's own failure stands)
    assert reap_dead_runs(dg.build_sensor_context(instance=instance)).skip_message == "no dead runs"


def test_a_run_created_and_never_launched_is_failed_once_it_is_old_enough(home):
    """Found in review: a `dg launch` killed between creating its run and launching it left the run NOT_STARTED
    forever, and the UI showed its assets as materializing (automation stays off an asset with a run in progress)."""
    instance = dg.DagsterInstance.from_config(str(home))

    @dg.asset
    def never_launched():
        return 1

    job = dg.define_asset_job("never", selection=[never_launched]).resolve(asset_graph=dg.Definitions(
        assets=[never_launched]).resolve_asset_graph())
    run = instance.create_run_for_job(job)
    assert reap_dead_runs(dg.build_sensor_context(instance=instance)).skip_message == "no dead runs"  # just created
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.NOT_STARTED
    assert reap(instance, unlaunched_after=0.0).lines() == [f"run {run.run_id[:8]} was created and never launched: "
                                                             "marked failed"]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    failure = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert "never launched: the command that created it (dg launch" in failure[0].event_log_entry.dagster_event.message
    assert reap(instance, unlaunched_after=0.0).describe() == "no dead runs"


LONG_STEP = """
import os
import time
from pathlib import Path

import dagster as dg

from qpipe.jobs import forked_steps_executor
from qpipe.resources import Warehouse

TICKS = Path(os.environ["TICKS"])


@dg.asset
def trains_for_long(warehouse: Warehouse):
    TICKS.with_suffix(".pid").write_text(str(os.getpid()))
    for _ in range(1200):  # a checkpoint that would write its weights once done (2 min, should the test fail)
        with TICKS.open("a") as ticks:
            ticks.write(".")
        time.sleep(0.1)


defs = dg.Definitions(assets=[trains_for_long], resources={"warehouse": Warehouse(database=os.environ["WH"])},
                      executor=forked_steps_executor)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie no one waits for is gone too
    except FileNotFoundError:
        return True


def test_a_step_ends_with_its_run_worker_when_that_is_killed(home, tmp_path):
    """Found in review: `kill -9` of `dg launch` left its forked step training; 3 s later it replaced the stored
    checkpoint (its run already failed by the reaper), and it stayed, with the forkserver, hanging on the dead
    worker's pipes. The step now ends within seconds of its worker, and its stderr says why."""
    module = tmp_path / "long_step.py"
    module.write_text(LONG_STEP)
    ticks = tmp_path / "ticks"
    env = {**_env(home), "TICKS": str(ticks), "WH": str(tmp_path / "w.duckdb")}
    launcher = subprocess.Popen([str(BIN / "dagster"), "asset", "materialize", "-f", str(module), "--select",
                                 "trains_for_long"], env=env, cwd=tmp_path, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (ticks.exists() and ticks.stat().st_size > 5) and time.monotonic() < deadline:
        time.sleep(0.2)
    step = int(ticks.with_suffix(".pid").read_text())
    assert step != launcher.pid and not _gone(step)
    launcher.send_signal(signal.SIGKILL)  # and not reaped yet: a zombie, as under a parent that reads its pipes
    deadline = time.monotonic() + 10
    while not _gone(step) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(step), "the step outlived its run worker"
    launcher.wait(timeout=30)
    written = ticks.stat().st_size
    time.sleep(1.0)
    assert ticks.stat().st_size == written
    told = [path.read_text() for path in (home / "storage").rglob("*.err")]
    assert any(f"this step (pid {step}) ends with it, writing nothing more" in text for text in told), told
