"""The training frame of a Qlib workflow equals what Qlib's own ``DatasetH.prepare`` gives (issue 16).

Goldens: pyqlib 0.9.7 on the provider directory of ``golden/fixture_prices.csv``, for Qlib's MLP Alpha158
workflow (DropCol, CSZFillna; learn DropCol, DropnaProcessor, DropnaLabel, CSZScoreNorm; independent) and
its LSTM Alpha360 workflow (the benchmark chains, append), the train segment of each (golden/README.md).
qpipe computes the features from the same prices and applies the processors its translation of the same
YAML names, fitted on the same window.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qpipe.features.alpha158 import alpha158_columns
from qpipe.features.alpha360 import alpha360_columns
from qpipe.features.handler import handler_processing, learn_frame, read_columns
from qpipe.features.label import LABEL_NAME, label
from qpipe.features.panel import panel_from_frame
from qpipe.models.config import read_qlib_yaml
from qpipe_tests.conftest import SHARED

GOLDEN = Path(__file__).parent / "golden"
META = json.loads((GOLDEN / "qlib_dataset" / "meta.json").read_text())
TOLERANCE = 1e-6  # |ours - qlib| <= TOLERANCE * max(1, |qlib|)
COLUMNS = {"alpha158": alpha158_columns, "alpha360": alpha360_columns}


@pytest.fixture(scope="module")
def raw() -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """qpipe's features and label of the fixture, one row per price row, as dataset.WindowRows reads them."""
    panel = panel_from_frame(pd.read_csv(GOLDEN / "fixture_prices.csv", parse_dates=["date"]))
    t, j = np.nonzero(panel.present)  # row-major: sorted by date, then instrument
    index = pd.MultiIndex.from_arrays([panel.dates[t].astype("datetime64[ns]"), panel.instruments[j].astype(str)],
                                      names=["datetime", "instrument"])
    out = {}
    for feature_set, columns in COLUMNS.items():
        named = dict(columns(panel))
        block = np.asfortranarray(np.column_stack([values[t, j] for values in named.values()]))
        out[feature_set] = (pd.DataFrame(block, index=index, columns=list(named), copy=False),
                            pd.DataFrame({LABEL_NAME: label(panel)[t, j]}, index=index))
    return out


def _compare(ours: pd.DataFrame, golden: pd.DataFrame, what: str) -> None:
    golden = golden.set_index(["datetime", "instrument"])
    assert list(ours.index.get_level_values("instrument")) == list(golden.index.get_level_values("instrument")), what
    assert (ours.index.get_level_values("datetime") == golden.index.get_level_values("datetime")).all(), what
    assert list(ours.columns) == list(golden.columns), what
    a, b = ours.to_numpy(np.float64), golden.to_numpy(np.float64)
    same_nan = np.isnan(a) == np.isnan(b)
    assert same_nan.all(), f"{what}: NaN differs at {golden.columns[np.argwhere(~same_nan)[0][1]]}"
    finite = np.isfinite(b)
    assert (a[~finite & ~np.isnan(b)] == b[~finite & ~np.isnan(b)]).all(), f"{what}: an infinity differs"
    worst = np.abs(a[finite] - b[finite]) / np.maximum(1, np.abs(b[finite]))
    assert worst.max() <= TOLERANCE, f"{what}: off by {worst.max():.2e}"


@pytest.mark.parametrize("workflow", sorted(META["workflows"]))
def test_the_train_segment_is_what_qlibs_dataseth_prepares(raw, workflow):
    entry = META["workflows"][workflow]
    document = read_qlib_yaml(SHARED / "qlib_configs" / entry["yaml"])
    feature_set = document["task"]["dataset"]["kwargs"]["handler"]["class"].lower()
    processing = handler_processing(feature_set, document["task"]["dataset"]["kwargs"]["handler"]["kwargs"], entry["yaml"])
    train = [pd.Timestamp(d) for d in META["segments"]["train"]]
    infer, learn = processing.chains(*train)
    features, labels = raw[feature_set]
    features = features[read_columns(list(features.columns), infer, learn, processing.process_type)].copy()  # as read
    inferred = infer.fit_transform(features.assign(**{LABEL_NAME: labels[LABEL_NAME].to_numpy()}))
    learned_features, learned_label = learn_frame(features, labels, *processing.chains(*train), processing.process_type)
    learned = learned_features.assign(**{LABEL_NAME: learned_label.to_numpy()})

    def segment(frame: pd.DataFrame) -> pd.DataFrame:
        dates = frame.index.get_level_values("datetime")
        return frame[(dates >= train[0]) & (dates <= train[1])]

    _compare(segment(learned), pd.read_parquet(GOLDEN / "qlib_dataset" / f"{workflow}_learn.parquet"), f"{workflow} DK_L")
    _compare(segment(inferred), pd.read_parquet(GOLDEN / "qlib_dataset" / f"{workflow}_infer.parquet"), f"{workflow} DK_I")
