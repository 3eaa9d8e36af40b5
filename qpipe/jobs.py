"""Asset jobs, and the selection a daily run takes on days without retraining."""

import dagster as dg

DAILY = dg.AssetSelection.groups("ingest", "features", "models", "predictions", "reports")
WITHOUT_RETRAINING = DAILY - dg.AssetSelection.groups("models")

daily_pipeline = dg.define_asset_job(
    "daily_pipeline",
    selection=DAILY,
    description="Everything computable for one trading day: prices, features, the labels that became known, "
                "checkpoints (on retrain days, QPIPE_RETRAIN_EVERY), predictions and IC reports.",
    run_tags={"dagster/max_runtime": "21600"},
)
