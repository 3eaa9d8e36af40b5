"""A workflow's home and settings. The home holds its warehouse and checkpoints (Qlib's experiment),
``<QPIPE_HOME>/workflows/<YAML name>`` unless one is named, and records which YAML it belongs to, so that two
workflows of one file name (``config.yaml`` in two folders) never mix their runs in it. The ``QPIPE_*`` settings of
the shell that a workflow decides (its data, market, benchmark, calendar, warehouse) are not inherited: the YAML and
its report decide, as in Qlib. Nothing here reads the shell's other settings: they are settled before qpipe's assets
are imported (found in code review: a bad value the workflow replaces, QPIPE_LAKE=x, stopped even a dry run)."""

import os
from pathlib import Path

import yaml

from qpipe.settings import VARIABLES, Settings
from qpipe.workflow.translate import Workflow

# Settings a Qlib workflow does not decide: kept from the shell. The machine's, HIST's concepts (QPIPE_CONCEPTS,
# which a Qlib workflow names as .npy files qpipe does not read), and how the provider's rows without volume are
# stored (QPIPE_SUSPEND_IDLE, found in review: the README's way out of Alpha158's huge volume ratios was dropped)
MACHINE = ("QPIPE_DEVICE", "QPIPE_FEATURE_DEVICE", "QPIPE_BLOCK_CELLS", "QPIPE_LOAD_CELLS", "QPIPE_FRAME_CELLS",
           "QPIPE_FRESH_BY", "QPIPE_CONCEPTS", "QPIPE_SUSPEND_IDLE")

OWNER = "workflow.txt"  # in the home: the resolved path of the YAML whose runs it holds


class HomeTaken(ValueError):
    pass


def workflow_home(workflow_path: str | Path, home: str | Path | None = None) -> Path:
    """``home``, else ``<QPIPE_HOME>/workflows/<YAML name>`` (QPIPE_HOME alone is read)."""
    if home:
        return Path(home).expanduser().absolute()
    return Settings(home=os.environ.get("QPIPE_HOME") or ".qpipe").home / "workflows" / Path(workflow_path).stem


def claim(home: Path, workflow_path: Path, mark: bool = True) -> None:
    """HomeTaken where ``home`` holds another YAML's runs; else (``mark``) mark it as the runs of ``workflow_path``
    (found in code review: two workflows named config.yaml shared one warehouse, their ICs on one leaderboard)."""
    owner = home / OWNER
    mine = str(Path(workflow_path).resolve())
    if owner.is_file() and owner.read_text().strip() != mine:
        raise HomeTaken(f"{home} holds the runs of {owner.read_text().strip()}, another workflow than {mine}: run "
                        "this one with --home NEW_FOLDER")
    if mark:
        home.mkdir(parents=True, exist_ok=True)
        owner.write_text(mine + "\n")


def left_out(workflow: Workflow) -> dict[str, str]:
    """The shell's QPIPE_* settings a run of ``workflow`` leaves out (found in review: QPIPE_BENCHMARK=AAPL in the
    shell was the backtest's benchmark of a YAML with none, while the report said the equal-weighted market)."""
    return {name: value for name, value in os.environ.items() if name in VARIABLES and name not in MACHINE
            and name != "QPIPE_HOME" and name not in workflow.settings}


def settle(workflow: Workflow, home: Path) -> None:
    """The workflow's settings in this process's environment, read by its settings and the code server it starts;
    a DataHandlerLP's loader set written in the home for them (QPIPE_FEATURE_SETS)."""
    for name in left_out(workflow):
        del os.environ[name]
    os.environ.update({**workflow.settings, "QPIPE_HOME": str(home)})
    if workflow.feature_sets:
        sets = home / "feature_sets.yaml"
        home.mkdir(parents=True, exist_ok=True)
        sets.write_text(yaml.safe_dump(workflow.feature_sets, sort_keys=False))
        os.environ["QPIPE_FEATURE_SETS"] = str(sets)


def refuse_a_missing_provider(workflow: Workflow) -> None:
    """FileNotFoundError where the workflow's provider directory is not one (before anything is written)."""
    provider = Path(workflow.settings["QPIPE_SOURCE_PATH"])
    if not (provider / "calendars" / "day.txt").is_file():
        raise FileNotFoundError(f"{workflow.path}: qlib_init.provider_uri = {provider}: not a Qlib provider directory "
                                "(no calendars/day.txt)")
