"""A translated Qlib workflow, run: the settings it names, then its runs through a code server, as the main job
launches them (so they are in the UI with their lineage, and Ctrl-C or Terminate stops them).

Each workflow has a home and settings of its own (``qpipe.workflow.home``), which this module's imports read.
"""

import os
from pathlib import Path

import dagster as dg

from qpipe.assets.models import backtest_key, checkpoint_key, predictions_key
from qpipe.main import IN_PROCESS, QUIET, Stage, _span, print_leaderboard, run_stage
from qpipe.workflow.records import print_records
from qpipe.workflow.translate import Workflow


def stages(workflow: Workflow) -> list[Stage]:
    """Prices, features, the checkpoint of the fixed split, the test segment's assets, the leaderboard."""
    model = workflow.model
    name, start, end = workflow.name, workflow.span[0], workflow.data_end
    checkpoint = checkpoint_key(name).to_python_identifier()
    # Dagster's config holds no nulls; a missing key takes its default
    params = {k: v for k, v in {**model.to_json()["params"], "step_len": model.step_len}.items() if v is not None}

    def training(window) -> dict:
        return {"feature_set": model.feature_set, "train_days": window.train_days, "valid_days": window.valid_days,
                "params": params, **workflow.processing.model_dump()}

    # the test segment is scored by this workflow's checkpoints alone, not by those an earlier one left in the store
    test_config = {predictions_key(name).to_python_identifier():
                   {"config": {"checkpoints": [str(c.day) for c in workflow.checkpoints]}}}
    if workflow.port_analysis is not None:
        # (Dagster's run config holds no nulls: Qlib's null limit_threshold or trade_unit goes as "none")
        port_analysis = {k: "none" if v is None else v for k, v in workflow.port_analysis.items()}
        test_config[backtest_key(name).to_python_identifier()] = {"config": {"port_analysis": port_analysis}}
    runs = [
        Stage(f"prices and universe {workflow.prices_from}..{end}", "daily_pipeline",
              ["raw/prices", "raw/universe", "raw/concepts"], _span(workflow.prices_from, end), {**IN_PROCESS, **QUIET}),
        Stage(f"features and labels {start}..{end}", "daily_pipeline", [f"features/{model.feature_set}", "features/label"],
              _span(start, end), {**IN_PROCESS, **QUIET}),
        *(Stage(f"{name} checkpoint on {c.day} ({c.train_days} train, {c.valid_days} valid sessions)", "daily_pipeline",
                [f"models/{name}_checkpoint"], {"dagster/partition": str(c.day)},
                {"ops": {checkpoint: {"config": training(c)}}, **QUIET}) for c in workflow.checkpoints),
        Stage(f"test segment {workflow.test[0]}..{workflow.test[1]}", "daily_pipeline", workflow.test_assets(),
              _span(*workflow.test), {"ops": test_config, **IN_PROCESS, **QUIET}),
    ]
    if workflow.ic_tail:
        runs.append(Stage(f"IC of the test segment's last sessions, their labels known {workflow.ic_tail[0]}.."
                          f"{workflow.ic_tail[1]}", "daily_pipeline", [f"reports/{name}_ic"], _span(*workflow.ic_tail),
                          {**IN_PROCESS, **QUIET}))
    if workflow.ranks_on_the_leaderboard:
        runs.append(Stage("leaderboard", "leaderboard_job", ["reports/leaderboard"], {}, {**IN_PROCESS, **QUIET}))
    return runs


def run(workflow: Workflow, home: Path) -> int:
    """Materialize the workflow's runs in the instance at DAGSTER_HOME, into ``home`` (the QPIPE_HOME ``home.settle``
    set); 0 when every run succeeded."""
    from qpipe.launcher import code_server

    stored_before = (home / "warehouse.duckdb").exists()
    planned = stages(workflow)
    log_file = Path(os.environ["DAGSTER_HOME"]) / "logs" / "qpipe-qrun.log"
    with code_server(dg.DagsterInstance.get(), log_file) as server:
        for number, stage in enumerate(planned, 1):
            status = run_stage(server, stage, number, len(planned))
            if status != dg.DagsterRunStatus.SUCCESS:
                print(f"the run's log is in the UI; the processes' console output in {log_file}")
                if number == 1 and stored_before:  # (found in review: the advice was a config qrun cannot pass)
                    print(f"{home} holds what an earlier run of this workflow stored, kept as it was; to run it "
                          f"apart: qpipe qrun {workflow.path} --home NEW_FOLDER (or remove {home})")
                return 130 if status == dg.DagsterRunStatus.CANCELED else 1
    if planned[-1].job == "leaderboard_job":
        print_leaderboard(workflow.test_sessions)
    print_records(workflow, home / "warehouse.duckdb")
    return 0
