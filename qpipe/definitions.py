"""The composition root: the one Definitions object of the qpipe code location."""

import dagster as dg

from qpipe.assets.features import feature_assets, label_asset
from qpipe.assets.prices import raw_prices
from qpipe.jobs import daily_pipeline
from qpipe.resources import build_resources
from qpipe.schedules import after_close

defs = dg.Definitions(
    assets=[raw_prices, *feature_assets, label_asset],
    jobs=[daily_pipeline],
    schedules=[after_close],
    resources=build_resources(),
)
