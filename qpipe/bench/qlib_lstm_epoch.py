"""Qlib 0.9.7's own LSTM on the market ``python -m qpipe.bench training --qlib-provider DIR`` dumped.

The side-by-side half of the training benchmark. It needs pyqlib, which is not a qpipe
dependency, so it runs in a scratch venv and imports nothing from qpipe:

    python3.11 -m venv /tmp/qlibvenv && /tmp/qlibvenv/bin/pip install torch==2.13.0 pyqlib==0.9.7
    python -m qpipe.bench training --qlib-provider /tmp/qlib_bench      # qpipe's figures
    /tmp/qlibvenv/bin/python qpipe/bench/qlib_lstm_epoch.py /tmp/qlib_bench

Same windows (DIR/segments.json), same processors as Qlib's Alpha360 benchmark YAML, the same
LSTM (hidden 64 x 2, batch 800, Adam 1e-3) on the CPU with the same thread count; it prints the
dataset build and each part of Qlib's epoch (train, re-score train, score valid).
"""

import argparse
import json
import os
import time
from pathlib import Path

import qlib
import torch
from qlib.contrib.data.handler import Alpha360
from qlib.contrib.model.pytorch_lstm import LSTM
from qlib.data.dataset import DatasetH


def timed_method(obj, name: str, seconds: list[float]) -> None:
    """Wrap ``obj.name`` so each call's wall time is appended to ``seconds``."""
    method = getattr(obj, name)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - began)

    setattr(obj, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("provider", help="the dir written by qpipe.bench training --qlib-provider")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    segments = json.loads((Path(args.provider) / "segments.json").read_text())
    (train_start, train_end), (valid_start, valid_end) = segments["train"], segments["valid"]
    qlib.init(provider_uri=args.provider, region="us", kernels=args.threads)

    began = time.perf_counter()
    handler = Alpha360(
        instruments=segments["market"], start_time=train_start, end_time=valid_end,
        fit_start_time=train_start, fit_end_time=train_end,
        infer_processors=[{"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
                          {"class": "Fillna", "kwargs": {"fields_group": "feature"}}],
        learn_processors=[{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
    )
    dataset = DatasetH(handler, segments={"train": (train_start, train_end), "valid": (valid_start, valid_end),
                                          "test": (valid_start, valid_end)})
    build = time.perf_counter() - began

    model = LSTM(d_feat=6, hidden_size=64, num_layers=2, dropout=0.0, n_epochs=args.epochs, lr=1e-3,
                 early_stop=20, batch_size=800, metric="loss", loss="mse", GPU=-1, seed=0)
    train_calls: list[float] = []
    test_calls: list[float] = []  # per epoch: re-score train, then score valid
    timed_method(model, "train_epoch", train_calls)
    timed_method(model, "test_epoch", test_calls)
    began = time.perf_counter()
    model.fit(dataset)
    fit = time.perf_counter() - began

    print(f"Qlib 0.9.7 LSTM on Alpha360, {torch.get_num_threads()} threads, segments {segments}")
    print(f"  dataset build (features, processors)  {build:8.2f} s")
    for epoch, train_seconds in enumerate(train_calls):
        rescore, valid = test_calls[2 * epoch], test_calls[2 * epoch + 1]
        print(f"  epoch {epoch + 1}: train {train_seconds:.2f} s + re-score train {rescore:.2f} s + "
              f"score valid {valid:.2f} s = {train_seconds + rescore + valid:.2f} s")
    print(f"  fit, including dataset.prepare and the final save  {fit:8.2f} s")


if __name__ == "__main__":
    main()
