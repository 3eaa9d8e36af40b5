"""The composition root: the one Definitions object of the qpipe code location."""

import warnings

import dagster as dg

from qpipe.assets.features import feature_checks, feature_tables, label_table
from qpipe.assets.leaderboard import leaderboard, leaderboard_job, refresh_leaderboard
from qpipe.assets.models import model_assets, model_checks
from qpipe.assets.prices import (members_have_their_history, prices_are_unique_and_consistent,
                                 prices_cover_the_listed_instruments, prices_have_no_split_like_moves, raw_prices,
                                 raw_universe)
from qpipe.freshness import build_freshness
from qpipe.jobs import daily_pipeline, step_executor
from qpipe.reaper import reap_dead_runs, reap_on_load
from qpipe.resources import build_resources
from qpipe.schedules import after_close
from qpipe.settings import get_settings
from qpipe.workflow.job import qlib_workflow

# Dagster's own parser of selection strings ("group:ingest" in `dg launch --assets`) passes AssetSelection's
# beta parameter include_sources and so warns about it on every command that selects a group: not the user's doing.
warnings.filterwarnings("ignore", message="Parameter `include_sources` of function", category=dg.BetaWarning)

assets = [raw_prices, raw_universe, feature_tables, label_table, *model_assets, leaderboard]
fresh_after_the_close, freshness_sensor = build_freshness(assets)

defs = dg.Definitions(
    assets=assets,
    asset_checks=[prices_are_unique_and_consistent, prices_cover_the_listed_instruments, prices_have_no_split_like_moves,
                  members_have_their_history,
                  *feature_checks, *model_checks, fresh_after_the_close],
    jobs=[daily_pipeline(unscheduled=fresh_after_the_close), leaderboard_job, qlib_workflow],
    schedules=[after_close],
    sensors=[refresh_leaderboard, reap_dead_runs, freshness_sensor],
    resources=build_resources(),
    executor=step_executor(get_settings().executor, get_settings().celery_broker),
)

reap_on_load()  # a run that starts now must not wait behind one whose process is gone (qpipe.reaper)
