"""A translated Qlib workflow, run: the settings it names, then its runs through a code server, as the main job
launches them (so they are in the UI with their lineage, and Ctrl-C or Terminate stops them)."""

import os
from pathlib import Path

import dagster as dg

from qpipe.assets.models import backtest_key, checkpoint_key, predictions_key
from qpipe.main import IN_PROCESS, QUIET, Stage, _span, print_leaderboard, run_stage
from qpipe.workflow.translate import Workflow


def stages(workflow: Workflow) -> list[Stage]:
    """Prices, features, the checkpoint of the fixed split, the test segment's assets, the leaderboard."""
    model = workflow.model
    arch, start, end = model.model, *workflow.span
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
    if workflow.ranks_on_the_leaderboard:
        runs.append(Stage("leaderboard", "leaderboard_job", ["reports/leaderboard"], {}, {**IN_PROCESS, **QUIET}))
    return runs


def run(workflow: Workflow) -> int:
    """Materialize the workflow's runs in the instance at DAGSTER_HOME; 0 when every run succeeded."""
    from qpipe.launcher import code_server
    from qpipe.resources import build_resources
    from qpipe.workflow.records import qlib_records

    provider = Path(workflow.settings["QPIPE_SOURCE_PATH"])
    if not (provider / "calendars" / "day.txt").is_file():
        raise FileNotFoundError(f"{workflow.path}: qlib_init.provider_uri = {provider}: not a Qlib provider directory "
                                "(no calendars/day.txt)")
    if not os.environ.get("DAGSTER_HOME"):
        raise RuntimeError("DAGSTER_HOME is not set: the runs need an instance to live in")
    os.environ.update(workflow.settings)  # read by this process's settings and by the code server it starts
    planned = stages(workflow)
    log_file = Path(os.environ["DAGSTER_HOME"]) / "logs" / "qpipe-qrun.log"
    with code_server(dg.DagsterInstance.get(), log_file) as server:
        for number, stage in enumerate(planned, 1):
            status = run_stage(server, stage, number, len(planned))
            if status != dg.DagsterRunStatus.SUCCESS:
                print(f"the run's log is in the UI; the processes' console output in {log_file}")
                return 130 if status == dg.DagsterRunStatus.CANCELED else 1
    if planned[-1].job == "leaderboard_job":
        print_leaderboard(workflow.test_sessions)
    with build_resources()["warehouse"].get_connection() as con:
        records = qlib_records(con, workflow.model.model, *workflow.test, signal=workflow.ranks_on_the_leaderboard,
                               portfolio=workflow.port_analysis is not None)
    if records:
        print(records)
    return 0
