"""A Qlib workflow launched from the UI: the ``qlib_workflow`` job runs ``qpipe qrun`` on the YAML its run config
names, as the command line does.

A workflow's runs need settings of their own (its provider directory, market and calendar), so ``qpipe qrun``
starts a code server with them; its runs land in this instance beside the job's run, and its console is this
run's log. The workflow's warehouse and checkpoints live apart, under ``<QPIPE_HOME>/workflows/<YAML name>``
unless the config names a home (as on the command line), so a provider's market never mixes with the one this code
location serves.
Terminating the job's run stops the workflow's running run as Ctrl-C does.
"""

import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from qpipe.workflow.home import workflow_home


class QrunConfig(dg.Config):
    """``qpipe qrun``'s arguments."""

    workflow: str = Field(description="path of a Qlib workflow YAML, e.g. workflow_config_lstm_Alpha158.yaml")
    rolling_step: int = Field(default=0, ge=0, description="RollingGen(step): a checkpoint every N sessions of the "
                              "test segment; 0 = one checkpoint before it (Qlib's fixed split)")
    rolling_type: str = Field(default="ROLL_EX", description="ROLL_EX (expanding train window) or ROLL_SD (sliding)")
    dry_run: bool = Field(default=False, description="only the translation report: what each key means in qpipe")
    epochs: int = Field(default=0, ge=0, description="train N epochs instead of the YAML's n_epochs (a quick run); "
                        "0 = the YAML's")
    home: str = Field(default="", description="QPIPE_HOME of the workflow's warehouse and checkpoints "
                      "(default <QPIPE_HOME>/workflows/<YAML name>)")

    def command(self) -> list[str]:
        rolling = ["--rolling-step", str(self.rolling_step), "--rolling-type", self.rolling_type] if self.rolling_step else []
        return [sys.executable, "-m", "qpipe.cli", "qrun", self.workflow, *rolling, "--home", str(self.workflow_home()),
                *(["--epochs", str(self.epochs)] if self.epochs else []), *(["--dry-run"] if self.dry_run else [])]

    def workflow_home(self) -> Path:
        return workflow_home(self.workflow, self.home or None)


@dg.op(description="qpipe qrun on the workflow YAML of the run config; its output is this run's log")
def qrun(context: dg.OpExecutionContext, config: QrunConfig) -> dg.Output:
    home = config.workflow_home()
    context.log.info(f"qpipe qrun {config.workflow}: warehouse and checkpoints in {home}")
    process = subprocess.Popen(config.command(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip())
            if lines[-1]:
                context.log.info(lines[-1])
        code = process.wait()
    except BaseException:  # the run was terminated: stop the workflow's running run, as its Ctrl-C does
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        raise
    if code != 0:
        raise dg.Failure(f"qpipe qrun {config.workflow} exited with {code}", description="\n".join(lines[-20:]))
    return dg.Output(None, metadata={"home": dg.MetadataValue.path(str(home)), "lines": len(lines)})


@dg.job(description="A Qlib workflow YAML run as qpipe's assets (qpipe qrun): launch it with the YAML's path in the "
                    "run config")
def qlib_workflow():
    qrun()
