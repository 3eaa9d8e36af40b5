"""Asset jobs."""

import dagster as dg

daily_pipeline = dg.define_asset_job(
    "daily_pipeline",
    selection="group:ingest or group:features",
    description="Everything computable for one trading day: prices, features, labels that became known.",
    run_tags={"dagster/max_runtime": "21600"},
)
