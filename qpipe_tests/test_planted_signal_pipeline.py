"""The whole pipeline on the synthetic market finds the planted signal out of sample; a placebo does not.

Prices -> features -> labels -> checkpoint -> predictions -> daily Rank IC, all through Dagster on
the embedded market (300 instruments). A bug that misaligns features and labels by a day, or
scrambles the Alpha360 [6, 60] -> [60, 6] reshape, leaves the models with nothing to learn, and the
first assertion fails; a leak of future labels into the features makes the placebo (labels
permuted within each day before training) look skilled, and the second fails.
"""

import duckdb
import numpy as np
import pytest

from qpipe.calendar import trading_days
from qpipe.features.store import LOOKBACK
from qpipe_tests.test_model_assets import run, synthetic_resources

FEATURES_FROM, CHECKPOINT_DAY, LAST_DAY = "2023-01-03", "2024-01-31", "2024-09-30"
PROFILE = {"train_days": 240, "valid_days": 40}
PARAMS = {"mlp": {"n_epochs": 30, "batch_size": 512, "seed": 0},  # the placebo's seed: see below
          "lstm": {"n_epochs": 4, "hidden_size": 32}}  # the main job's quick RNN


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QPIPE_MARKET", "all")
        resources = synthetic_resources(root)
        prices_from = str(trading_days("2022-01-03", FEATURES_FROM)[-LOOKBACK - 1])
        run(prices_from, LAST_DAY, ["raw/prices", "raw/universe", "raw/concepts"], resources)
        run(FEATURES_FROM, LAST_DAY, ["features/alpha360", "features/label"], resources)
        yield resources


def out_of_sample_rank_ic_t(resources, arch: str, shuffle_labels: bool = False) -> tuple[float, int]:
    """Train ``arch`` on CHECKPOINT_DAY, score the days after it; t-statistic of the daily Rank IC."""
    config = {**PROFILE, "params": PARAMS[arch], "shuffle_labels": shuffle_labels}
    run(CHECKPOINT_DAY, CHECKPOINT_DAY, [f"models/{arch}_checkpoint"], resources,
        {f"models__{arch}_checkpoint": {"config": config}})
    first_scored = str(trading_days(CHECKPOINT_DAY, LAST_DAY)[1])
    run(first_scored, LAST_DAY, [f"predictions/{arch}_predictions", f"reports/{arch}_ic"], resources)
    with duckdb.connect(resources["warehouse"].database, read_only=True) as con:
        rank_ic = con.execute('SELECT "Rank IC" FROM reports.daily_ic WHERE model = ? ORDER BY date',
                              [arch]).fetchnumpy()["Rank IC"]
    return float(rank_ic.mean() / rank_ic.std(ddof=1) * np.sqrt(len(rank_ic))), len(rank_ic)


# The LSTM at the main job's quick profile finds this market's effects at every seed tried (t = 5.8 to 6.6 over
# seeds 0-3, measured). The MLP at its quick profile finds them only weakly (t from -1.3 to 4.6 over seeds and
# batch orders, measured): it cannot carry a t > 3 bar, and serves as the cheap placebo below instead.
@pytest.mark.parametrize("arch", ["lstm"])
def test_models_find_the_planted_signal_out_of_sample(market, arch):
    t, days = out_of_sample_rank_ic_t(market, arch)
    print(f"{arch}: out-of-sample Rank IC t = {t:.2f} over {days} days")
    assert days > 150
    assert t > 3, f"{arch}: out-of-sample Rank IC t = {t:.2f} over {days} days"


def test_a_model_trained_on_labels_shuffled_within_days_has_no_skill(market):
    # A placebo is a random function of the features: on a market with planted effects it may still
    # correlate with returns by chance, but it must not reach the bar the real models clear.
    # Measured over seeds 0-29 (the permutation and the initial weights): t from -4.8 to +4.2, sd 1.8, above 3 at
    # seeds 4 (4.2) and 14 (3.6): the chance correlation of a permutation with the planted effects (see
    # test_training's shuffled-label test), which the model rightly learns. The seed decides, not the last bits:
    # the thread count (1 or 2) moved no seed's t by more than 0.2. So the placebo trains at seed 0, t -0.2 (1
    # thread; -0.3 on 2), 3.2 below the bar, and not at a drawn seed, for which t < 3 fails about once in 15.
    t, days = out_of_sample_rank_ic_t(market, "mlp", shuffle_labels=True)
    print(f"placebo mlp: out-of-sample Rank IC t = {t:.2f} over {days} days")
    assert days > 150
    assert t < 3, f"placebo: out-of-sample Rank IC t = {t:.2f} over {days} days"
