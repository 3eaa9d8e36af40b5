"""README command 1 as a user runs it: a concise live console, runs that the UI can stop, Ctrl-C, nothing left held.

Each test starts ``python -m qpipe.main`` in a session of its own (as a terminal would: Ctrl-C
reaches its whole process group) on a fresh DAGSTER_HOME and a small embedded market.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.events import DagsterEventType

from qpipe.console import RunView
from qpipe_tests.conftest import REPO

pytestmark = pytest.mark.slow
PROGRESS = re.compile(r"  \[\d+:\d\d(:\d\d)?\] ")  # the console's progress line: [elapsed] step latest | ...
STAGE = re.compile(r"\[\d/\d\] ")

def _as_from_a_terminal() -> None:
    """Ctrl-C reaches the job as it does from a terminal: a test run in the background of a shell (CI's `cmd &`)
    ignores SIGINT, and a process started with it ignored ignores it too (found in CI: the job ran on to its end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class MainJob:
    """``python -m qpipe.main`` in a new session, its output lines collected with their arrival times."""

    def __init__(self, tmp_path: Path, *args: str, instruments: int = 60):
        self.home = tmp_path / "dagster_home"
        self.home.mkdir()
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        self.warehouse = tmp_path / "qpipe" / "warehouse.duckdb"
        self.env = env = {**os.environ, "DAGSTER_HOME": str(self.home), "QPIPE_HOME": str(tmp_path / "qpipe"),
                          "QPIPE_SYNTHETIC_INSTRUMENTS": str(instruments), "PYTHONUNBUFFERED": "1"}
        self.lines: list[tuple[float, str]] = []
        # The test's own view of the instance, made first: two processes creating one sqlite storage at once race
        # ("table alembic_version already exists").
        self._instance = dg.DagsterInstance.from_config(str(self.home))
        self.process = subprocess.Popen([sys.executable, "-m", "qpipe.main", *args], cwd=REPO, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_as_from_a_terminal)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def instance(self) -> dg.DagsterInstance:
        return self._instance

    def wait_for_training(self, instance: dg.DagsterInstance, timeout: float = 400) -> dg.DagsterRun:
        """The checkpoint run, once its training step has reported progress."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.text
            # still training now: a checkpoint that early-stopped while a loaded machine polled slowly left the stop
            # to the job's last seconds, or after them (found in CI: the job had ended, with 0)
            for run in instance.get_runs(dg.RunsFilter(tags={"qpipe/main": "yes"},
                                                       statuses=[dg.DagsterRunStatus.STARTED])):
                if any("_checkpoint" in key for key in run.step_keys_to_execute or []):
                    if any("batch" in (e.user_message or "") for e in instance.all_logs(run.run_id)):
                        return run
            time.sleep(1)
        raise AssertionError(f"no training progress within {timeout}s:\n{self.text}")

    def _processes(self, field: int) -> list[int]:
        """Processes whose /proc/<pid>/stat ``field`` (counted after the name: 2 process group, 3 session) is ours."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def leftover_processes(self) -> list[int]:
        """Processes still in the main job's session (the code server, run workers, step processes)."""
        return self._processes(3)

    def foreground_group(self) -> list[int]:
        """The processes a terminal's Ctrl-C reaches: the main job's process group."""
        return self._processes(2)

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _nothing_held(job: MainJob, instance: dg.DagsterInstance) -> None:
    gpu = instance.event_log_storage.get_concurrency_info("gpu")
    assert gpu.claimed_slots == [] and gpu.pending_steps == []
    deadline = time.monotonic() + 30
    while job.leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.leftover_processes() == []
    duckdb.connect(str(job.warehouse)).close()  # no process holds the warehouse's write lock


def test_the_main_job_shows_progress_trains_the_cheapest_first_and_prints_the_leaderboard(tmp_path):
    job = MainJob(tmp_path, "--models", "gru,mlp", "--test-days", "40", "--epochs", "8", instruments=150)  # ~40 s of GRU
    try:
        assert job.wait(timeout=900) == 0, job.text
    finally:
        job.kill()
    text = job.text
    lines = [line for _, line in job.lines]
    # Concise: a line per stage and per step, the leaderboard, and progress lines (one per RunView.every seconds while
    # steps run, so their number is the machine's speed and is not bounded here).
    progress = [i for i, line in enumerate(lines) if PROGRESS.match(line)]
    assert len(lines) - len(progress) < 70, text
    assert "DEBUG" not in text and "Warning" not in text and "  warning " not in text, text  # the steps warn of nothing
    for stage in ("[1/5] prices and universe", "[2/5] features and labels", "[3/5] checkpoints on",
                  "[4/5] predictions, IC reports and backtests", "[5/5] leaderboard"):
        assert stage in text, text
    # The cheapest first: the order the executor launched the two training steps in (they run side by side, so
    # the order they start or finish in is the machine's).
    instance = job.instance()
    (training,) = [run for run in instance.get_runs(dg.RunsFilter(tags={"qpipe/main": "yes"}))
                   if any("_checkpoint" in key for key in run.step_keys_to_execute or [])]
    launched = [e.step_key for e in instance.all_logs(training.run_id, of_type=DagsterEventType.STEP_WORKER_STARTING)
                if e.step_key.endswith("_checkpoint")]  # (not their asset checks' steps)
    assert launched == ["models__mlp_checkpoint", "models__gru_checkpoint"], text
    # While a step runs, the console shows its progress: every step that took over three progress periods (a
    # period, and a loaded machine's slower polls, twice over) had a progress line naming it while it ran.
    stage = 0
    for i, line in enumerate(lines):
        if STAGE.match(line):
            stage = i
        elif line.lstrip().startswith("done") and float(line.split()[2].rstrip("s")) > 3 * RunView.every:
            name = line.split()[1].split("/")[-1]
            assert any(name in lines[k] for k in progress if stage < k < i), (line, text)
    stage3, stage4 = (next(i for i, line in enumerate(lines) if line.startswith(f"[{n}/5]")) for n in (3, 4))
    assert any("epoch" in line and "ETA" in line for line in lines[stage3:stage4]), text
    board = text.split("Out-of-sample leaderboard")[1].splitlines()
    assert board[1].split() == ["model", "dataset", "IC", "ICIR", "Rank", "IC", "Rank", "ICIR", "days", "Ann.", "Ret",
                                "IR", "MDD", "backtest", "days"], text  # Qlib's table: the signal, then the portfolio
    assert all(line.split()[1] == "Alpha360" for line in board[2:4]), text
    assert sorted(line.split()[0] for line in board[2:4]) == ["gru", "mlp"], text
    assert all(line.split()[-1] == "40" for line in board[2:4]), text  # every scored session traded
    sheet = Path(text.split("Tear sheets (HTML, open offline): ")[1].split(",")[0])
    assert {"leaderboard.html", "mlp_tearsheet.html", "gru_tearsheet.html"} <= {p.name for p in sheet.parent.iterdir()}
    runs = instance.get_runs(dg.RunsFilter(tags={"qpipe/main": "yes"}))
    assert len(runs) == 5 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    _nothing_held(job, instance)



def test_a_run_terminated_as_the_ui_does_ends_canceled_and_holds_nothing(tmp_path):
    job = MainJob(tmp_path, "--models", "gru", "--test-days", "40", "--epochs", "100")  # still training when stopped
    try:
        instance = job.instance()
        run = job.wait_for_training(instance)
        assert instance.run_coordinator.cancel_run(run.run_id)  # what the UI's Terminate button calls
        assert job.wait(timeout=120) == 130, job.text
    finally:
        job.kill()
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    assert "canceled" in job.text.lower()
    _nothing_held(job, instance)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_cancels_the_running_run_and_holds_nothing(tmp_path, stop):
    """SIGTERM (timeout, kill, systemd) was found by a user to leave the code server running the run to its end."""
    job = MainJob(tmp_path, "--models", "gru", "--test-days", "40", "--epochs", "100")  # still training when stopped
    try:
        instance = job.instance()
        run = job.wait_for_training(instance)
        # Only the console gets the terminal's Ctrl-C: a step that got it too would fail instead of being canceled.
        assert job.foreground_group() == [job.process.pid] and len(job.leftover_processes()) > 3
        if stop == "ctrl-c":
            os.killpg(job.process.pid, signal.SIGINT)  # what a terminal sends its foreground group on Ctrl-C
        else:
            job.process.terminate()  # what timeout, kill and systemd send the process itself
        assert job.wait(timeout=120) == 130, job.text
    finally:
        job.kill()
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED, job.text
    assert "stopping run" in job.text
    _nothing_held(job, instance)


class _StoreRefused(Exception):
    pass


def test_a_failed_step_is_one_line_naming_the_error_without_its_module():
    """Found in review: a failed step's line began with the exception's module path
    (``qpipe.data.warehouse.RowsWouldBeLost: ...``), Dagster's ``Failure`` with its own."""
    import io

    @dg.asset
    def refused():
        raise _StoreRefused("raw.prices: this ingest would remove 3 stored price rows\nmore detail")

    @dg.asset
    def failed():
        raise dg.Failure("partition 2024-01-31 is a session not yet closed")

    with dg.instance_for_test() as instance:
        lines = []
        for asset in (refused, failed):
            result = dg.materialize([asset], instance=instance, raise_on_error=False)
            out = io.StringIO()
            assert RunView(instance, result.run_id, out=out).follow() == dg.DagsterRunStatus.FAILURE
            lines += [line.split(None, 2)[2] for line in out.getvalue().splitlines() if "FAILED" in line]
    assert lines == ["_StoreRefused: raw.prices: this ingest would remove 3 stored price rows",
                     "partition 2024-01-31 is a session not yet closed"]
