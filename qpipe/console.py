"""The main job's console: a concise live view of a run, read from the instance's event log.

A line when a step finishes (or fails, with its error) or logs a warning, and the running steps' latest progress
(``epoch 2/4  batch 23/47  49%  ETA 0:41`` from training, the last log line otherwise): on a
terminal one status line rewritten in place, elsewhere (a pipe, a CI log) one line every
``every`` seconds while something runs, so the console is never silent for 10 seconds. Everything
else, DEBUG events included, stays in the run log in the UI.
"""

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import dagster as dg
from dagster._core.events import DagsterEventType

from qpipe.reaper import reap
from qpipe.training.progress import clock

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def step_name(step_key: str) -> str:
    """models__lstm_checkpoint -> models/lstm_checkpoint (an asset step's key is its asset key)."""
    return step_key.replace("__", "/")


def root_cause(error) -> str:
    """The innermost error's first line: the user's exception, not Dagster's wrapper around it, named without its
    module (found in review: ``qpipe.data.warehouse.RowsWouldBeLost: ...`` before the message was noise), a
    ``dg.Failure`` by its message alone."""
    while error is not None and (error.cause or error.context) is not None:
        error = error.cause or error.context
    lines = error.message.strip().splitlines() if error is not None else []
    if not lines:
        return ""
    name, _, message = lines[0].partition(": ")  # (format_exception_only: the class's qualified name first)
    name = name.rsplit(".", 1)[-1]
    return message if name == "Failure" else f"{name}: {message}" if message else name


@dataclass
class _Step:
    started: float
    message: str = ""


@dataclass
class RunView:
    """Follows one run: ``follow()`` prints as events arrive and returns the run's final status."""

    instance: dg.DagsterInstance
    run_id: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    every: float = 8.0  # seconds between progress lines when out is not a terminal (the promise: under 10)
    poll: float = 0.5
    width: int | None = None  # characters per line: the terminal's (at most 140) when out is one, else 110

    def __post_init__(self) -> None:
        self.live = self.out.isatty()
        if self.width is None:
            self.width = min(shutil.get_terminal_size((110, 24)).columns, 140) if self.live else 110
        self.started = time.monotonic()
        self._cursor: str | None = None
        self._running: dict[str, _Step] = {}
        self._status_shown = False
        self._last_progress = time.monotonic()
        self._step_failed = False
        self._checks = {"passed": 0, "failed": 0}
        self._check_steps: set[str] = set()  # steps that run asset checks: their results are shown, not "done"
        self._waiting: dict[str, str] = {}  # step -> the pool it waits for, held by other runs
        self._last_reap = 0.0

    def follow(self) -> dg.DagsterRunStatus:
        while True:
            self.read_events()
            run = self.instance.get_run_by_id(self.run_id)
            if run is not None and run.status in FINISHED:
                self.read_events()  # events written between the last read and the status change
                self._clear_status()
                if sum(self._checks.values()):
                    self._line(f"  checks  {self._checks['passed']} passed" +
                               (f", {self._checks['failed']} failed" if self._checks["failed"] else ""))
                return run.status
            self._show_progress()
            self._reap_while_waiting()
            time.sleep(self.poll)

    def read_events(self) -> None:
        while True:
            connection = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, limit=1000)
            for record in connection.records:
                self._on_entry(record.event_log_entry)
            self._cursor = connection.cursor
            if not connection.has_more:
                return

    def _on_entry(self, entry) -> None:
        event = entry.dagster_event
        if event is None:  # a log message from a step
            if entry.step_key and entry.step_key in self._running and entry.level >= 20:
                step = self._running[entry.step_key]
                step.message = entry.user_message.splitlines()[0] if entry.user_message else ""
            if entry.step_key and entry.level >= logging.WARNING:  # (the info lines go to the UI's log)
                level = "error  " if entry.level >= logging.ERROR else "warning"
                text = entry.user_message.replace("\n", "\n" + " " * 41)
                self._line(f"  {level} {step_name(entry.step_key):<30} {text}", cut=False)
            return
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            self._running[event.step_key] = _Step(started=entry.timestamp)
            self._waiting.pop(event.step_key, None)
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            self._on_check(event.step_key, event.event_specific_data)
        elif kind == DagsterEventType.STEP_SUCCESS and event.step_key in self._check_steps:
            self._running.pop(event.step_key, None)
        elif kind == DagsterEventType.STEP_SUCCESS:
            step = self._running.pop(event.step_key, _Step(entry.timestamp))
            self._line(f"  done    {step_name(event.step_key):<30} {entry.timestamp - step.started:6.1f}s  {step.message}")
        elif kind == DagsterEventType.STEP_FAILURE:
            self._running.pop(event.step_key, None)
            self._step_failed = True
            self._line(f"  FAILED  {step_name(event.step_key):<30} {root_cause(event.step_failure_data.error)}",
                       cut=False)
        elif kind == DagsterEventType.ENGINE_EVENT and (entry.message or "").startswith("Step blocked by limit for pool"):
            pool = entry.message.rsplit(" ", 1)[-1]
            holders = self._other_holders(pool)
            if holders:  # (steps of this run taking turns are the plan, not news)
                self._waiting[event.step_key] = pool
                self._line(f"  waiting {step_name(event.step_key):<30} for a slot of pool {pool}, held by run "
                           f"{', '.join(holders)}")
        elif kind in (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED) and not self._step_failed:
            self._line(f"  {entry.message or kind.value}", cut=False)

    def _on_check(self, step_key: str, evaluation) -> None:
        self._check_steps.add(step_key)
        self._checks["passed" if evaluation.passed else "failed"] += 1
        if not evaluation.passed:
            facts = ", ".join(f"{k} {v.value}" for k, v in evaluation.metadata.items() if v.value not in ("", 0))
            self._line(f"  check   {evaluation.asset_key.to_user_string()} {evaluation.check_name} FAILED "
                       f"({evaluation.severity.value}): {facts}", cut=False)

    def _reap_while_waiting(self, every: float = 10.0) -> None:
        """While a step waits for a pool held by another run, check every ``every`` s whether that run is dead."""
        if not self._waiting or time.monotonic() - self._last_reap < every:
            return
        self._last_reap = time.monotonic()
        for line in reap(self.instance).lines():
            self._line(f"  {line}")

    def _other_holders(self, pool: str) -> list[str]:
        """The other runs holding a pool's slots (their ids as the UI shows them)."""
        claimed = self.instance.event_log_storage.get_concurrency_info(pool).claimed_slots
        return sorted({slot.run_id[:8] for slot in claimed if slot.run_id != self.run_id})

    def _show_progress(self) -> None:
        if not self._running:
            return
        now = time.monotonic()
        parts = [f"{step_name(key).split('/')[-1]} {step.message or 'started'}" for key, step in self._running.items()]
        text = f"  [{clock(now - self.started)}] " + " | ".join(parts)
        if self.live:
            self._clear_status()
            self.out.write(self._cut(text))
            self.out.flush()
            self._status_shown = True
        elif now - self._last_progress >= self.every:
            self._line(text)

    def _line(self, text: str, cut: bool = True) -> None:
        self._clear_status()
        self.out.write((self._cut(text) if cut else text.rstrip()) + "\n")
        self.out.flush()
        self._last_progress = time.monotonic()

    def _cut(self, text: str) -> str:
        text = text.rstrip()
        return text if len(text) <= self.width else text[: self.width - 3] + "..."

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[K")
            self._status_shown = False
