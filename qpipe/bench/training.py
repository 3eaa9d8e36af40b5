"""Training-engine benchmark: where an epoch's time goes, against a plain PyTorch floor.

Random Alpha360-shaped data (instruments x days rows, 360 columns), or with ``--feature-set
alpha158`` 20 columns read through TSDatasetH step_len-20 windows. The engine's epoch
(gathering batches on the device, masked loss, gradient clipping, loss accounting, validation
with loss and daily IC) is timed against a floor: the same model and the same batches,
pre-gathered into contiguous tensors, run through a bare forward/backward/step loop, plus a
bare no-grad forward over the valid set. The ratio engine/floor is the engine's overhead.

    python -m qpipe.bench.training                       # 300 x 2500, LSTM 64x2, batch 800
    python -m qpipe.bench.training --steps-per-epoch 100 # bound the epoch on a small CPU
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch

from qpipe.bench import timed
from qpipe.models.config import ModelConfig, model_config
from qpipe.training.engine import build_model, make_frame_sampler, train
from qpipe.training.frame import TrainingFrame
from qpipe.training.reproducibility import resolve_device
from qpipe.training.samplers import Sampler

FIELDS = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")
ALPHA360 = [f"{field}{lag}" for field in FIELDS for lag in range(59, -1, -1)]


def random_frame(n_instruments: int, n_days: int, first_day: int, columns: list[str], seed: int) -> TrainingFrame:
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.datetime64("2010-01-01") + first_day + np.arange(n_days), n_instruments)
    instruments = np.tile(np.array([f"S{i:04d}" for i in range(n_instruments)]), n_days)
    features = rng.standard_normal((len(dates), len(columns)), dtype=np.float32)
    label = rng.standard_normal(len(dates), dtype=np.float32)
    return TrainingFrame(features, label, dates, instruments, columns, np.ones(len(dates), dtype=bool))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_epoch(config: ModelConfig, sampler: Sampler, valid_sampler: Sampler, device: torch.device, steps: int) -> tuple[float, float]:
    """(train, valid) seconds of a bare loop over pre-gathered copies of the same batches."""
    params = config.params
    batch_size = params["batch_size"]
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    generator = torch.Generator().manual_seed(params["seed"])
    stream = sampler.train_batches(batch_size, generator)
    train_batches = []
    for _ in range(steps):
        positions = next(stream)
        train_batches.append((sampler.gather(positions).contiguous(), sampler.label[positions].contiguous()))
    valid_batches = [valid_sampler.gather(p).contiguous() for p in valid_sampler.eval_batches(batch_size)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        optimizer.step()

    model.train()
    for x, y in train_batches[:2]:  # warm-up, untimed (the engine's first epoch is not counted either)
        step(x, y)
    synchronize(device)
    started = time.perf_counter()
    for x, y in train_batches:
        step(x, y)
    synchronize(device)
    train_seconds = time.perf_counter() - started

    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for x in valid_batches:
            model(x)
    synchronize(device)
    return train_seconds, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--feature-set", choices=("alpha360", "alpha158"), default="alpha360")
    parser.add_argument("--instruments", type=int, default=300)
    parser.add_argument("--days", type=int, default=2500, help="total days; the last --valid-days validate")
    parser.add_argument("--valid-days", type=int, default=500)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="batches per epoch (default: one pass)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = model_config(
        args.model, args.feature_set, hidden_size=args.hidden_size, num_layers=args.num_layers, batch_size=args.batch_size,
        n_epochs=args.epochs, early_stop=args.epochs, steps_per_epoch=args.steps_per_epoch,
    )
    train_days = args.days - args.valid_days
    columns = ALPHA360 if args.feature_set == "alpha360" else [f"F{i}" for i in range(config.params["d_feat"])]
    train_frame = random_frame(args.instruments, train_days, 0, columns, seed=1)
    valid_frame = random_frame(args.instruments, args.valid_days, train_days, columns, seed=2)
    print(f"{args.model} on {args.feature_set} (step_len {config.step_len}), hidden {args.hidden_size} x {args.num_layers}, batch {args.batch_size}, device {device}, "
          f"{torch.get_num_threads()} threads; {train_frame.features.shape[0]} train / {valid_frame.features.shape[0]} valid rows")

    with timed("data -> tensors", {}):
        train_sampler = make_frame_sampler(config, train_frame, device)
        valid_sampler = make_frame_sampler(config, valid_frame, device)
        synchronize(device)
    steps = args.steps_per_epoch or train_sampler.steps_per_pass(args.batch_size)

    # A floor epoch runs after every engine epoch (in the epoch callback, outside the engine's
    # timing), so drift in machine load hits both alike; the first of each is warm-up.
    floors: list[tuple[float, float]] = []
    result = train(
        config, train_frame, valid_frame, device=device,
        on_epoch=lambda _: floors.append(floor_epoch(config, train_sampler, valid_sampler, device, steps)),
    )
    epochs = result.history[1:] or result.history
    floors = floors[1:] or floors
    engine_total = statistics.median(m["seconds"] for m in epochs)
    engine_valid = statistics.median(m["valid_seconds"] for m in epochs)
    floor_train = statistics.median(train_seconds for train_seconds, _ in floors)
    floor_valid = statistics.median(valid_seconds for _, valid_seconds in floors)
    floor_total = floor_train + floor_valid
    for engine_epoch, (train_seconds, valid_seconds) in zip(epochs, floors):
        print(f"  epoch {engine_epoch['epoch']}: engine {engine_epoch['seconds']:.2f} s, floor {train_seconds + valid_seconds:.2f} s")
    print(f"per epoch ({steps} batches, median of {len(epochs)} epochs after the first):")
    print(f"  engine train   {engine_total - engine_valid:8.2f} s   floor forward+backward+step {floor_train:8.2f} s   "
          f"everything else {engine_total - engine_valid - floor_train:+.2f} s")
    print(f"  engine valid   {engine_valid:8.2f} s   floor forward                {floor_valid:8.2f} s")
    print(f"  engine epoch   {engine_total:8.2f} s   floor                        {floor_total:8.2f} s   "
          f"ratio {engine_total / floor_total:.3f}")


if __name__ == "__main__":
    main()
