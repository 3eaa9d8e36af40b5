"""Asset jobs."""

import dagster as dg

daily_pipeline = dg.define_asset_job(
    "daily_pipeline",
    selection="group:ingest or group:features or group:models or group:predictions or group:reports",
    description="Everything computable for one trading day: prices, features, the labels that became known, "
                "checkpoints, predictions and IC reports.",
    run_tags={"dagster/max_runtime": "21600"},
)
