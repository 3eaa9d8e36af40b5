"""qpipe.features.handler: Qlib's DataHandlerLP processing (DK_I, DK_L) on a small frame with NaN, inf and gaps."""

import numpy as np
import pandas as pd
import pytest

from qpipe.features.handler import (HANDLER_INFER, HANDLER_LEARN, Processing, benchmark_processing, handler_processing,
                                    infer_frame, learn_frame, read_columns)
from qpipe.features.processors import ProcessorChain
from qpipe.models.config import ConfigError

FIT = ("2021-01-04", "2021-02-26")
COLUMNS = ["KLEN", "ROC60", "VWAP0", "STD5"]


def _raw(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=60)
    index = pd.MultiIndex.from_product([dates, [f"S{i}" for i in range(12)]], names=["datetime", "instrument"])
    x = rng.normal(size=(len(index), len(COLUMNS))).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[7, 1], x[100, 0] = np.inf, -np.inf
    y = rng.normal(size=len(index)).astype(np.float32)
    y[rng.random(len(y)) < 0.1] = np.nan
    features = pd.DataFrame(np.asfortranarray(x), index=index, columns=COLUMNS, copy=False)
    return features, pd.DataFrame({"LABEL0": y}, index=index)


CHAINS = {
    "benchmark": benchmark_processing("alpha360", None),
    "mlp alpha158": Processing(
        infer_processors=[{"class": "DropCol", "kwargs": {"col_list": ["VWAP0"]}}, {"class": "CSZFillna", "kwargs": {"fields_group": "feature"}}],
        learn_processors=[{"class": "DropCol", "kwargs": {"col_list": ["VWAP0"]}}, {"class": "DropnaProcessor", "kwargs": {"fields_group": "feature"}},
                          "DropnaLabel", {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}],
        process_type="independent"),
    "alpha360 handler defaults": Processing(infer_processors=HANDLER_INFER["alpha360"], learn_processors=HANDLER_LEARN),
    "every column at once": Processing(
        infer_processors=[{"class": "ProcessInf"}, {"class": "RobustZScoreNorm", "kwargs": {"clip_outlier": False}},
                          {"class": "CSZFillna"}],
        learn_processors=[{"class": "DropnaProcessor"}, {"class": "CSRankNorm"}]),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_learn_frame_is_the_chains_applied_to_the_joined_frame(name):
    """The features and label processed apart (to keep numpy's fast paths) equal Qlib's way: one frame, each
    processor fitted on the previous one's output."""
    processing = CHAINS[name]
    features, label = _raw()
    joint = features.assign(LABEL0=label["LABEL0"].to_numpy())
    infer, learn = processing.chains(*FIT)
    inferred = infer.fit_transform(joint)
    expected = learn.fit_transform(inferred if processing.process_type == "append" else joint)

    got_features, got_label = learn_frame(features, label, *processing.chains(*FIT), processing.process_type)
    pd.testing.assert_frame_equal(got_features, expected.drop(columns="LABEL0"), check_dtype=False)
    np.testing.assert_array_equal(got_label.to_numpy(), expected["LABEL0"].to_numpy())
    # what a prediction reads: the fitted infer chain on the features alone
    scored = infer_frame(infer, features)
    pd.testing.assert_frame_equal(scored, inferred.drop(columns="LABEL0"), check_dtype=False)


def test_a_prediction_reads_the_columns_its_infer_chain_keeps_and_training_those_either_chain_does():
    infer = ProcessorChain.from_config([{"class": "FilterCol", "kwargs": {"col_list": ["STD5", "KLEN"]}}, "Fillna"])
    learn = ProcessorChain.from_config([{"class": "DropCol", "kwargs": {"col_list": ["KLEN"]}}, "DropnaLabel"])
    assert read_columns(COLUMNS, infer) == ["KLEN", "STD5"]  # the feature set's order, not the list's
    assert read_columns(COLUMNS, infer, learn, "append") == ["KLEN", "STD5"]  # learn reads what infer left
    assert read_columns(COLUMNS, infer, learn, "independent") == ["KLEN", "ROC60", "VWAP0", "STD5"]  # learn reads raw


def test_a_handler_without_chains_takes_its_own_defaults_and_bad_entries_are_named():
    assert handler_processing("alpha158", {}, "x.yaml").infer_processors == []
    assert [e["class"] for e in handler_processing("alpha360", {}, "x.yaml").infer_processors] == [
        "ProcessInf", "ZScoreNorm", "Fillna"]
    with pytest.raises(ConfigError, match=r"^x.yaml: learn_processors\[1\]: unknown processor class 'Nope'"):
        handler_processing("alpha360", {"learn_processors": ["DropnaLabel", "Nope"]}, "x.yaml")
    with pytest.raises(ConfigError, match=r"^x.yaml: process_type Input should be 'append' or 'independent'"):
        handler_processing("alpha360", {"process_type": "both"}, "x.yaml")
