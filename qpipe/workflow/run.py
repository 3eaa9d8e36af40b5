"""A translated Qlib workflow, run: the settings it names, then its runs through a code server, as the main job
launches them (so they are in the UI with their lineage, and Ctrl-C or Terminate stops them).

Each workflow has a home of its own (its warehouse and checkpoints, Qlib's experiment): ``<QPIPE_HOME>/workflows/<YAML
name>`` unless one is named, so a second workflow never overwrites the first one's figures, which ``qpipe qrun
FILE.yaml --records`` prints again. The ``QPIPE_*`` settings of the shell that the workflow decides (its data, market,
benchmark, calendar, warehouse) are not inherited: the YAML and its report decide, as in Qlib.
"""

import os
from pathlib import Path

import dagster as dg

from qpipe.assets.models import backtest_key, checkpoint_key, predictions_key
from qpipe.main import IN_PROCESS, QUIET, Stage, _span, print_leaderboard, run_stage
from qpipe.settings import VARIABLES, get_settings
from qpipe.workflow.translate import Workflow

# Settings of the machine, not of a workflow: kept from the shell (QPIPE_CONCEPTS: HIST's concepts, which a Qlib
# workflow names as .npy files qpipe does not read)
MACHINE = ("QPIPE_DEVICE", "QPIPE_FEATURE_DEVICE", "QPIPE_BLOCK_CELLS", "QPIPE_LOAD_CELLS", "QPIPE_FRAME_CELLS",
           "QPIPE_FRESH_BY", "QPIPE_CONCEPTS")


def workflow_home(workflow_path: str | Path, home: str | Path | None = None) -> Path:
    """Where a workflow's warehouse and checkpoints live: ``home``, else ``<QPIPE_HOME>/workflows/<YAML name>``."""
    return Path(home).expanduser().absolute() if home else get_settings().home / "workflows" / Path(workflow_path).stem


def left_out(workflow: Workflow) -> dict[str, str]:
    """The shell's QPIPE_* settings a run of ``workflow`` leaves out (found in review: QPIPE_BENCHMARK=AAPL in the
    shell was the backtest's benchmark of a YAML with none, while the report said the equal-weighted market)."""
    return {name: value for name, value in os.environ.items() if name in VARIABLES and name not in MACHINE
            and name != "QPIPE_HOME" and name not in workflow.settings}


def settle(workflow: Workflow, home: Path) -> None:
    """The workflow's settings in this process's environment, read by its settings and the code server it starts."""
    for name in left_out(workflow):
        del os.environ[name]
    os.environ.update({**workflow.settings, "QPIPE_HOME": str(home)})


def stages(workflow: Workflow) -> list[Stage]:
    """Prices, features, the checkpoint of the fixed split, the test segment's assets, the leaderboard."""
    model = workflow.model
    arch, start, end = model.model, workflow.span[0], workflow.data_end
    checkpoint = checkpoint_key(arch).to_python_identifier()
    # Dagster's config holds no nulls; a missing key takes its default
    params = {k: v for k, v in {**model.to_json()["params"], "step_len": model.step_len}.items() if v is not None}

    def training(window) -> dict:
        return {"feature_set": model.feature_set, "train_days": window.train_days, "valid_days": window.valid_days,
                "params": params, **workflow.processing.model_dump()}

    # the test segment is scored by this workflow's checkpoints alone, not by those an earlier one left in the store
    test_config = {predictions_key(arch).to_python_identifier():
                   {"config": {"checkpoints": [str(c.day) for c in workflow.checkpoints]}}}
    if workflow.port_analysis is not None:
        # (Dagster's run config holds no nulls: Qlib's null limit_threshold or trade_unit goes as "none")
        port_analysis = {k: "none" if v is None else v for k, v in workflow.port_analysis.items()}
        test_config[backtest_key(arch).to_python_identifier()] = {"config": {"port_analysis": port_analysis}}
    runs = [
        Stage(f"prices and universe {workflow.prices_from}..{end}", "daily_pipeline",
              ["raw/prices", "raw/universe", "raw/concepts"], _span(workflow.prices_from, end), {**IN_PROCESS, **QUIET}),
        Stage(f"features and labels {start}..{end}", "daily_pipeline", [f"features/{model.feature_set}", "features/label"],
              _span(start, end), {**IN_PROCESS, **QUIET}),
        *(Stage(f"{arch} checkpoint on {c.day} ({c.train_days} train, {c.valid_days} valid sessions)", "daily_pipeline",
                [f"models/{arch}_checkpoint"], {"dagster/partition": str(c.day)},
                {"ops": {checkpoint: {"config": training(c)}}, **QUIET}) for c in workflow.checkpoints),
        Stage(f"test segment {workflow.test[0]}..{workflow.test[1]}", "daily_pipeline", workflow.test_assets(),
              _span(*workflow.test), {"ops": test_config, **IN_PROCESS, **QUIET}),
    ]
    if workflow.ic_tail:
        runs.append(Stage(f"IC of the test segment's last sessions, their labels known {workflow.ic_tail[0]}.."
                          f"{workflow.ic_tail[1]}", "daily_pipeline", [f"reports/{arch}_ic"], _span(*workflow.ic_tail),
                          {**IN_PROCESS, **QUIET}))
    if workflow.ranks_on_the_leaderboard:
        runs.append(Stage("leaderboard", "leaderboard_job", ["reports/leaderboard"], {}, {**IN_PROCESS, **QUIET}))
    return runs


def run(workflow: Workflow, home: Path) -> int:
    """Materialize the workflow's runs in the instance at DAGSTER_HOME, into ``home``; 0 when every run succeeded."""
    from qpipe.launcher import code_server

    provider = Path(workflow.settings["QPIPE_SOURCE_PATH"])
    if not (provider / "calendars" / "day.txt").is_file():
        raise FileNotFoundError(f"{workflow.path}: qlib_init.provider_uri = {provider}: not a Qlib provider directory "
                                "(no calendars/day.txt)")
    settle(workflow, home)
    stored_before = (home / "warehouse.duckdb").exists()
    planned = stages(workflow)
    log_file = Path(os.environ["DAGSTER_HOME"]) / "logs" / "qpipe-qrun.log"
    with code_server(dg.DagsterInstance.get(), log_file) as server:
        for number, stage in enumerate(planned, 1):
            status = run_stage(server, stage, number, len(planned))
            if status != dg.DagsterRunStatus.SUCCESS:
                print(f"the run's log is in the UI; the processes' console output in {log_file}")
                if number == 1 and stored_before:  # (found in review: the advice was a config qrun cannot pass)
                    print(f"{home} holds what an earlier run of a workflow named {workflow.path.stem} stored, kept as "
                          f"it was; to run this one apart: qpipe qrun {workflow.path} --home NEW_FOLDER (or remove "
                          f"{home})")
                return 130 if status == dg.DagsterRunStatus.CANCELED else 1
    if planned[-1].job == "leaderboard_job":
        print_leaderboard(workflow.test_sessions)
    print_records(workflow)
    print(f"\nThe workflow's warehouse and checkpoints: {home}; these records again: qpipe qrun {workflow.path} "
          f"--records" + (f" --home {home}" if home != workflow_home(workflow.path) else ""))
    return 0


def print_records(workflow: Workflow) -> bool:
    """Print what Qlib's records print of the workflow's test segment, from the warehouse of QPIPE_HOME; whether it
    holds any."""
    from qpipe.resources import build_resources
    from qpipe.workflow.records import qlib_records

    with build_resources()["warehouse"].get_connection() as con:
        records = qlib_records(con, workflow.model.model, *workflow.test, signal=workflow.ranks_on_the_leaderboard,
                               portfolio=workflow.port_analysis is not None)
    if records:
        print(records)
    return bool(records)
