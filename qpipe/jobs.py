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

# Step processes forked from a server that has loaded the code location once, instead of a fresh interpreter per
# step that imports it again: about 4 s less per step on two cores (31 s -> 14 s for four steps), which is most of
# a daily run of small steps. The after-close schedule's runs use it. (Not the main job: a terminal's Ctrl-C
# reaches forked steps directly, and they fail instead of the run being canceled.)
FORKED_STEPS = {"start_method": {"forkserver": {"preload_modules": ["qpipe.definitions"]}}}

daily_pipeline = dg.define_asset_job(
    "daily_pipeline",
    selection=DAILY,
    description="Everything computable for one trading day: prices, features, the labels that became known, "
                "checkpoints (on retrain days, QPIPE_RETRAIN_EVERY), predictions and IC reports.",
    run_tags={"dagster/max_runtime": "21600"},
)
