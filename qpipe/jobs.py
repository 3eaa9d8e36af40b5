"""Asset jobs, and the selection a daily run takes on days without retraining."""

import warnings

import dagster as dg

# Checkpoints are BackfillPolicy.multi_run(1) (a backfill is Qlib's rolling retrain, one run per day) and the
# table assets single_run (a CLI range in one set-based pass). Dagster notes on every load that the job then
# backfills with the smaller policy, one run per day: exactly what daily_pipeline is meant to do.
warnings.filterwarnings("ignore", message="Asset job daily_pipeline materializes assets with varying BackfillPolicies",
                        category=UserWarning)

DAILY = dg.AssetSelection.groups("ingest", "features", "models", "predictions", "reports")
WITHOUT_RETRAINING = DAILY - dg.AssetSelection.groups("models")


def scheduled_models(selection: dg.AssetSelection) -> dg.AssetSelection:
    """``selection`` less the assets of the architectures the schedule leaves out (not in QPIPE_MODELS)."""
    from qpipe.models.registry import ARCHITECTURES
    from qpipe.settings import get_settings

    for name in set(ARCHITECTURES) - set(get_settings().models):  # (a variant has assets where QPIPE_MODELS names it)
        selection = selection - dg.AssetSelection.tag("qpipe/model", name)
    return selection

# Step processes forked from a server that has loaded the code location once, instead of a fresh interpreter per
# step that imports it again: about 4 s less per step on two cores (31 s -> 14 s for four steps), which is most of
# a run of small steps. Every run's default (UI, schedule, `dg launch`, the main job), unless its run config
# names a start method. (The main job's code server has a process group of its own, so a terminal's Ctrl-C
# reaches only the console, never a forked step: qpipe.launcher.)
FORKED_STEPS = {"start_method": {"forkserver": {"preload_modules": ["qpipe.definitions"]}}}


@dg.executor(name="multi_or_in_process_executor", config_schema=dg.multi_or_in_process_executor.config_schema,
             requirements=dg.multi_or_in_process_executor.get_requirements)
def forked_steps_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's default executor (same run config), whose multiprocess steps fork (FORKED_STEPS) by default."""
    config = init_context.executor_config
    if "multiprocess" in config and "start_method" not in config["multiprocess"]:
        config = {"multiprocess": {**config["multiprocess"], **FORKED_STEPS}}
    return dg.multi_or_in_process_executor.executor_creation_fn(init_context._replace(executor_config=config))


def step_executor(executor: str, celery_broker: str) -> dg.ExecutorDefinition:
    """The Definitions' executor: forked steps on this machine, or Celery workers (``QPIPE_EXECUTOR=celery``).

    Celery sends checkpoint steps to the ``gpu`` queue (their ``dagster-celery/queue`` tag) and the others to
    ``dagster``; the workers are qpipe.deploy.celery_app's. Pools (``duckdb``, ``gpu``) hold under both.
    """
    if executor == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError:
            raise ImportError("QPIPE_EXECUTOR=celery needs dagster-celery: pip install -e '.[celery]'") from None

        return celery_executor.configured({"broker": celery_broker, "backend": celery_broker}, name="celery")
    return forked_steps_executor


def daily_pipeline(unscheduled: dg.AssetChecksDefinition):
    """The job of a trading day's partition; ``unscheduled``: checks on its assets it leaves out (qpipe.freshness's,
    which its sensor evaluates)."""
    return dg.define_asset_job(
        "daily_pipeline",
        selection=DAILY - dg.AssetSelection.checks(unscheduled),
        description="Everything computable for one trading day: prices, features, the labels that became known, "
                    "checkpoints (on retrain days, QPIPE_RETRAIN_EVERY), predictions and IC reports.",
        run_tags={"dagster/max_runtime": "21600"},
    )
