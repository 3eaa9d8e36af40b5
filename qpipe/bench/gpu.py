"""The GPU check, one script for a machine with a GPU: CPU-vs-GPU scores of every architecture from the same
weights, one epoch of each on the device, peak GPU memory, a seeded GPU run repeated, bf16 mixed precision, and
the feature operators on the device against the CPU kernels.

    python -m qpipe.bench gpu                                   # 300 x 2500 synthetic, every architecture, cuda
    python -m qpipe.bench gpu --device cpu --instruments 60 --days 300 --train-days 120 --valid-days 40   # a dry run

The market is stored as the assets store it and each architecture gets its Qlib Alpha360 benchmark settings
(the LSTM's batch 800 included) and the checkpoint's data path. Scores: the valid set scored on the CPU and on
the device by the same initial weights, float32 both (TF32 off: qpipe.training.reproducibility; HIST in float64,
``agreement_dtype`` says why); they must agree to ``--tolerance`` x max(1, |score|). Epoch: the second of two
epochs (the first warms up cuDNN and the allocator), its valid pass included and shown apart. Features: Alpha158
and Alpha360 of the last 500 days (with their lookback) of the whole market, by the numba kernels and by
``TorchOps`` on the device, timed (the device's second pass) and compared (``ops_torch.disagreement``).
Data-parallel: the seeded LSTM epoch again by torch DDP under torchrun on every visible GPU (NCCL; two gloo CPU
ranks in a dry run), its weights against one process's to ``DDP_TOLERANCE``. It prints one line per architecture,
then PASS or FAIL for the agreements and the repeats.
"""

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from qpipe.bench.training import MARKET, build_warehouse
from qpipe.features import ops, store
from qpipe.features.ops_torch import TOLERANCE, TorchOps, disagreement
from qpipe.models.config import ModelConfig, build_model, model_config
from qpipe.models.registry import BUILTIN, get_spec
from qpipe.training.dataset import TrainingData, load_training_data
from qpipe.training.distributed import train_processes
from qpipe.training.engine import predict, train
from qpipe.training.reproducibility import repeatable_cuda, resolve_device, seed_everything


DDP_TOLERANCE = 1e-5  # max |w_ddp - w_one_process|: only the order of the sums differs (test_distributed.py, on
# the CPU with small networks; the benchmark LSTM on GPUs has not run yet, so its first figure calibrates this)
ONE_EPOCH = {"n_epochs": 1, "early_stop": 1}  # the seeded LSTM epoch that is repeated, then run data-parallel


def scores_on(config, frame, device: torch.device, seed: int, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The frame's scores by the config's freshly initialized network (seeded) on ``device``, in ``dtype``."""
    seed_everything(seed)
    net = build_model(config).to(device=device, dtype=dtype)
    if dtype != torch.float32:  # the sampler gathers float32 rows
        net.register_forward_pre_hook(lambda _, args: tuple(a.to(dtype) if a.is_floating_point() else a for a in args))
    return predict(net, frame, config)


def agreement_dtype(arch: str) -> torch.dtype:
    """float64 for HIST: each stock's nearest peer is an argmax over cosine similarities that a fresh network
    leaves within a float32 rounding of each other (a median gap of 6e-7 between the top two at 300 stocks), so
    any change of summation order picks other peers for whole days (5e-4 between two CPU thread counts)."""
    return torch.float64 if arch == "hist" else torch.float32


def peak_memory_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else float("nan")


def feature_check(con, device: torch.device) -> list[str]:
    """Alpha158 and Alpha360 of the market's last 500 days by the CPU kernels and on ``device``: times and gaps."""
    days = store.calendar(con)[-(500 + store.LOOKBACK):]
    panel = store.load_panel(con, days)
    failures = []
    for feature_set in store.FEATURE_SETS.values():
        began = time.perf_counter()
        cpu = dict(feature_set.compute(panel, ops))
        cpu_seconds = time.perf_counter() - began
        on_device = TorchOps(device)
        for _ in range(2):  # the first pass warms up the device (kernels, allocator)
            began = time.perf_counter()
            other = dict(feature_set.compute(panel, on_device))
            device_seconds = time.perf_counter() - began
        gaps = {name: disagreement(cpu[name], other[name]) for name in feature_set.columns}
        bad = [name for name, gap in gaps.items() if gap > TOLERANCE]
        worst = max(gaps, key=gaps.get)
        print(f"features {feature_set.name} of {panel.shape[0]} days x {panel.shape[1]} instruments: CPU kernels "
              f"{cpu_seconds:.2f} s, {device} {device_seconds:.2f} s; largest gap {gaps[worst]:.2e} ({worst}); "
              f"{'agree' if not bad else 'DISAGREE: ' + ', '.join(bad[:5])}", flush=True)
        failures += [f"feature {name} on {device}: gap {gaps[name]:.2e} > {TOLERANCE:g}" for name in bad]
    return failures


def data_parallel_check(frames: TrainingData, device: torch.device,
                        one_process: dict[str, torch.Tensor]) -> list[str]:
    """The ONE_EPOCH LSTM by torch DDP on every visible GPU (two gloo CPU ranks off CUDA) against ``one_process``'s
    weights. One GPU makes it one NCCL rank: NCCL's start, the pinning and DDP on CUDA run; a sum over ranks not."""
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if device.type == "cuda" else ["cpu", "cpu"]
    began = time.perf_counter()
    ranks = train_processes(model_config("lstm", "alpha360", **ONE_EPOCH, data_parall=len(devices)), frames.train,
                            frames.valid, devices=devices, threads=os.cpu_count() or 1)
    gap = max((ranks.state_dict[k].double() - one_process[k].double()).abs().max().item() for k in one_process)
    print(f"the same LSTM epoch by DDP on {', '.join(devices)}: max |w_ddp - w_one| = {gap:.2e} "
          f"({time.perf_counter() - began:.1f} s with torchrun's start)")
    return [] if gap <= DDP_TOLERANCE else [f"DDP on {devices} moved the weights by {gap:.2e} > {DDP_TOLERANCE:g}"]


def repeat_check(frames: TrainingData, device: torch.device) -> list[str]:
    """The ONE_EPOCH LSTM twice on ``device`` (the same weights: a seeded run repeats), then by DDP."""
    began = time.perf_counter()
    lstm = model_config("lstm", "alpha360", **ONE_EPOCH)
    runs = [train(lstm, frames.train, frames.valid, device=device).state_dict for _ in range(2)]
    repeated = all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    print(f"a seeded LSTM epoch on {device}, twice: {'identical weights' if repeated else 'DIFFERENT weights'} "
          f"({time.perf_counter() - began:.1f} s)")
    failures = [] if repeated else [f"a seeded LSTM run on {device} did not repeat"]
    return failures + guarded("DDP", lambda: data_parallel_check(frames, device, runs[0]))


def frames_key(config: ModelConfig) -> tuple[int | None, bool]:
    """What a config's frames depend on beyond the market: its window, and whether it reads concepts."""
    return config.step_len, get_spec(config.model).reads_concepts


def bench_config(arch: str, **params) -> ModelConfig:
    """The architecture's Alpha360 benchmark settings for two epochs (TabNet's pretraining too)."""
    extra = {"pretrain_n_epochs": 2} if arch == "tabnet" else {}
    return model_config(arch, "alpha360", n_epochs=2, early_stop=2, **extra, **params)


def architecture_check(arch: str, data: dict[tuple, TrainingData], device: torch.device,
                       tolerance: float) -> list[str]:
    """One row of the table: CPU-vs-device scores from the same weights, then two epochs in float32 and in bf16."""
    config = bench_config(arch)
    frames = data[frames_key(config)]
    dtype = agreement_dtype(arch)
    on_cpu = scores_on(config, frames.valid, torch.device("cpu"), 1, dtype)
    on_device = scores_on(config, frames.valid, device, 1, dtype)
    gap, scale = float(np.abs(on_cpu - on_device).max()), max(1.0, float(np.abs(on_cpu).max()))
    agree = gap <= tolerance * scale
    timings = []
    for amp in (None, "bf16"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = train(bench_config(arch, amp=amp), frames.train, frames.valid, device=device)
        last = result.history[-1]
        timings.append((last["seconds"], last["valid_seconds"], peak_memory_gb(device)))
    (epoch, valid, peak), (bf16_epoch, _, bf16_peak) = timings
    print(f"{arch:<12} {gap:>14.2e} {scale:>8.2f} {'yes' if agree else 'NO':>6} {epoch:>8.2f} {valid:>8.2f} "
          f"{peak:>8.2f} {bf16_epoch:>13.2f} {bf16_peak:>13.2f}"
          + ("  (scores in float64)" if dtype == torch.float64 else ""), flush=True)
    return [] if agree else [f"{arch}: CPU and {device} scores differ by {gap:.2e} (tolerance {tolerance * scale:.2e})"]


def guarded(name: str, check: Callable[[], list[str]]) -> list[str]:
    """``check``'s failures, or the error it raised as one: the other checks still run (a GPU machine is rare)."""
    try:
        return check()
    except Exception as error:
        print(f"{name:<12} FAILED: {type(error).__name__}: {error}", flush=True)
        return [f"{name}: {type(error).__name__}: {error}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--instruments", type=int, default=300)
    parser.add_argument("--days", type=int, default=2500)
    parser.add_argument("--train-days", type=int, default=720)
    parser.add_argument("--valid-days", type=int, default=240)
    parser.add_argument("--models", default=",".join(BUILTIN))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    device = resolve_device(args.device)
    if device.type == "cuda":
        repeatable_cuda()
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"storing a synthetic market of {args.instruments} x {args.days} days (prices, universe, alpha360, label)")
        con, last = build_warehouse(Path(tmp) / "bench.duckdb", args.instruments, args.days, "alpha360", None)
        failures = guarded("features", lambda: feature_check(con, device))
        data = {}
        for arch in args.models.split(","):
            config = bench_config(arch)
            if frames_key(config) not in data:
                data[frames_key(config)] = load_training_data(con, config, last, args.train_days, args.valid_days,
                                                              MARKET)
        con.close()

    print(f"{'model':<12} {'max |cpu-gpu|':>14} {'scale':>8} {'agree':>6} {'epoch s':>8} {'valid s':>8} {'peak GB':>8} "
          f"{'bf16 epoch s':>13} {'bf16 peak GB':>13}")
    for arch in args.models.split(","):
        failures += guarded(arch, lambda: architecture_check(arch, data, device, args.tolerance))

    frames = data.get(frames_key(model_config("lstm", "alpha360", **ONE_EPOCH)))
    if frames is not None:
        failures += guarded("LSTM repeat", lambda: repeat_check(frames, device))
    print("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
