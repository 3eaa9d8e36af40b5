"""The Dagster layer: assets that only wire the core (data, features, training, evaluation) together."""

import warnings

import dagster as dg

# BackfillPolicy is "beta" in Dagster 1.13; qpipe relies on it deliberately (single-run ranges,
# one run per checkpoint), so the warning would only repeat on every import of the code location.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
