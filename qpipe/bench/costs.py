"""Training cost of every architecture: seconds per 10,000 samples of one epoch, Qlib's Alpha360 settings.

Random Alpha360-shaped rows (``--instruments`` x ``--days``), each architecture with its Qlib
benchmark hyper-parameters, one pass over the rows (TabNet without its pretraining stage), on
``--threads`` CPU threads or the GPU. ``qpipe.models.registry.TRAINING_COST`` orders the daily
run's training steps by these figures.

    python -m qpipe.bench costs                      # all architectures, one thread
    python -m qpipe.bench costs --models mlp,lstm --threads 2
"""

import argparse
import time

import numpy as np
import torch

from qpipe.models.config import model_config
from qpipe.models.registry import ARCHITECTURES
from qpipe.training.engine import train
from qpipe.training.frame import TrainingFrame

FIELDS = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")
ALPHA360 = [f"{field}{lag}" for field in FIELDS for lag in range(59, -1, -1)]


def random_frame(n_instruments: int, n_days: int, seed: int = 0) -> TrainingFrame:
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.datetime64("2020-01-01") + np.arange(n_days), n_instruments)
    instruments = np.tile(np.array([f"S{i:04d}" for i in range(n_instruments)]), n_days)
    features = rng.standard_normal((len(dates), len(ALPHA360))).astype(np.float32)
    concepts = np.zeros((n_instruments, 8), dtype=np.float32)
    concepts[np.arange(n_instruments), np.arange(n_instruments) % 8] = 1
    return TrainingFrame(features, rng.standard_normal(len(dates)).astype(np.float32), dates, instruments, ALPHA360,
                         np.ones(len(dates), dtype=bool), concepts=concepts,
                         concept_row=np.tile(np.arange(n_instruments), n_days))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ARCHITECTURES))
    parser.add_argument("--instruments", type=int, default=200)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame = random_frame(args.instruments, args.days)
    samples = len(frame.label)
    print(f"{samples} samples ({args.instruments} x {args.days} days), {args.threads} thread(s), {args.device}")
    costs = {}
    for arch in args.models.split(","):
        config = model_config(arch, "alpha360", n_epochs=1, **({"pretrain": False} if arch == "tabnet" else {}))
        began = time.perf_counter()
        result = train(config, frame, None, device=args.device)
        costs[arch] = result.seconds_per_epoch / samples * 10_000
        print(f"  {arch:<12} {costs[arch]:8.2f} s per 10k samples  (epoch {result.seconds_per_epoch:.1f} s, "
              f"{time.perf_counter() - began:.1f} s with set-up)", flush=True)
    print("cheapest first:", ", ".join(sorted(costs, key=costs.get)))


if __name__ == "__main__":
    main()
