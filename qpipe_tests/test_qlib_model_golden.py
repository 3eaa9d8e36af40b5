"""Every architecture computes what Qlib's own network computes, from the same weights and rows.

qpipe_tests/golden/qlib_models/ holds, per architecture, a seeded Qlib network's weights, a batch
of Alpha360-layout rows and Qlib's scores (make_model_golden.py, run with pyqlib 0.9.7). Here the
weights load into qpipe's network under Qlib's state-dict keys (strictly), the rows go through
qpipe's sampler (the [N, 360] -> [N, 60, 6] reshape, one-day batches for GATs and HIST, HIST's
concept rows), and the scores must match.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qpipe.models.config import model_config
from qpipe.training import TrainingFrame, build_model
from qpipe.training.engine import make_frame_sampler

GOLDEN = Path(__file__).resolve().parent / "golden" / "qlib_models"
MODELS = json.loads((GOLDEN / "models.json").read_text())
FIELDS = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")
ALPHA360 = [f"{field}{lag}" for field in FIELDS for lag in range(59, -1, -1)]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_network_matches_qlibs_own(arch):
    golden = np.load(GOLDEN / f"{arch}.npz")  # plain arrays: allow_pickle stays False
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in MODELS[arch].items()}
    config = model_config(arch, "alpha360", **kwargs)
    net = build_model(config).eval()
    state = {name.removeprefix("state."): torch.from_numpy(golden[name]) for name in golden.files if name.startswith("state.")}
    net.load_state_dict(state, strict=True)  # Qlib's keys, all of them

    rows = golden["flat"]
    frame = TrainingFrame(rows, np.zeros(len(rows), np.float32), np.repeat(np.datetime64("2024-01-02"), len(rows)),
                          np.array([f"S{i:02d}" for i in range(len(rows))]), ALPHA360, np.ones(len(rows), bool),
                          concepts=golden["concepts"], concept_row=np.arange(len(rows)))
    inputs = make_frame_sampler(config, frame, torch.device("cpu")).inputs(torch.arange(len(rows)))
    with torch.no_grad():
        scores = net(*inputs).numpy()
    # SFM: Qlib's memory is float64 (an accidental promotion), qpipe's float32
    np.testing.assert_allclose(scores, golden["scores"], rtol=1e-5, atol=1e-6)
