"""Training-engine benchmark: data to tensors from the warehouse, and where an epoch's time goes.

A synthetic market (instruments x days) is stored as the assets store it (prices, universe,
features, labels in a temporary DuckDB file); then the checkpoint asset's own data path
(``dataset.load_training_data``: read, fit and apply Qlib's processors, split) and the move to
tensors on the device are timed. The engine's epoch (gathering batches on the device, masked
loss, gradient clipping, loss accounting, validation with loss and daily IC) is timed against a
floor: the same model and the same batches, pre-gathered into contiguous tensors, run through a
bare forward/backward/step loop, plus a bare no-grad forward over the valid set. The ratio
engine/floor is the engine's overhead.

    python -m qpipe.bench training                        # 300 x 2500, LSTM 64x2 on Alpha360, batch 800
    python -m qpipe.bench training --steps-per-epoch 100  # bound the epoch on a small CPU
    python -m qpipe.bench training --qlib-provider DIR    # also dump the market for qlib_lstm_epoch.py
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import torch

from qpipe.bench import synthetic_market, timed
from qpipe.data import warehouse as wh
from qpipe.data.qlib_provider import write_qlib_provider
from qpipe.features import store
from qpipe.models.config import ModelConfig, model_config
from qpipe.training.dataset import load_training_data
from qpipe.models.config import build_model
from qpipe.training.engine import make_frame_sampler, train
from qpipe.training.reproducibility import resolve_device
from qpipe.training.samplers import Sampler

MARKET = "all"


def build_warehouse(path: Path, n_instruments: int, n_days: int, feature_set: str, qlib_provider: str | None):
    """The synthetic market stored as the assets store it; returns (connection, last day)."""
    market = synthetic_market(n_instruments, n_days)
    first, last = market.prices["date"].min(), market.prices["date"].max()
    con = duckdb.connect(str(path), config=wh.CONNECTION_CONFIG)
    wh.write_prices(con, market.prices, first, last, calendar="XNYS")
    wh.write_universe(con, market.universe, market.concepts)
    store.write_features(con, [store.FEATURE_SETS[feature_set]], first, last)
    store.write_labels(con, first, last)
    if qlib_provider:
        write_qlib_provider(market.prices, qlib_provider, market.universe)
    return con, last


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
    parser.add_argument("--days", type=int, default=2500, help="trading days in the warehouse")
    parser.add_argument("--train-days", type=int, default=720)
    parser.add_argument("--valid-days", type=int, default=240)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="batches per epoch (default: one pass)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--qlib-provider", help="also write the market as a Qlib provider dir (+ segments.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = model_config(
        args.model, args.feature_set, hidden_size=args.hidden_size, num_layers=args.num_layers, batch_size=args.batch_size,
        n_epochs=args.epochs, early_stop=args.epochs, steps_per_epoch=args.steps_per_epoch,
    )
    print(f"{args.model} on {args.feature_set} (step_len {config.step_len}), hidden {args.hidden_size} x {args.num_layers}, "
          f"batch {args.batch_size}, device {device}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"storing a synthetic market of {args.instruments} x {args.days} days (prices, universe, {args.feature_set}, label)")
        con, last = build_warehouse(Path(tmp) / "bench.duckdb", args.instruments, args.days, args.feature_set,
                                    args.qlib_provider)
        t: dict[str, float] = {}
        with timed("warehouse -> processed frames", t):
            data = load_training_data(con, config, last, args.train_days, args.valid_days, MARKET)
        con.close()
    with timed("frames -> tensors on the device", t):
        train_sampler = make_frame_sampler(config, data.train, device)
        valid_sampler = make_frame_sampler(config, data.valid, device)
        synchronize(device)
    print(f"data -> tensors: {sum(t.values()):.2f} s (target 3 s; Qlib 0.9.7 built this dataset in 42.5 s, qlib_lstm_epoch.py, 2 cores); "
          f"{int(data.train.is_sample.sum())} train / {int(data.valid.is_sample.sum())} valid samples, "
          f"windows {data.windows.to_json()}")
    if args.qlib_provider:
        segments = {**data.windows.to_json(), "market": MARKET}
        (Path(args.qlib_provider) / "segments.json").write_text(json.dumps(segments))
        print(f"Qlib provider dir and segments.json written to {args.qlib_provider}")
    steps = args.steps_per_epoch or train_sampler.steps_per_pass(args.batch_size)

    # A floor epoch runs after every engine epoch (in the epoch callback, outside the engine's
    # timing), so drift in machine load hits both alike; the first of each is warm-up.
    floors: list[tuple[float, float]] = []
    result = train(
        config, data.train, data.valid, device=device,
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
