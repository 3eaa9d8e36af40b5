"""Data-parallel training of one checkpoint on K processes (Qlib's ``data_parall``), torch DDP under torchrun.

Every rank runs the one training loop (qpipe.training.engine.train) with a ``Rank`` for its hooks:

- All ranks hold the whole frames and draw the same batches from the same seeded generator; rank r
  trains on the r-th contiguous 1/K slice of each batch's positions.
- A rank's loss is its squared errors over its known labels divided by the count of known labels in
  the whole batch, so the ranks' losses sum to the batch's loss; DDP sums the gradients (a comm hook
  that all-reduces with SUM instead of averaging). clip_grad_value_ and the optimizer then see the
  full batch's gradient on every rank, and the weights equal one process's up to the order of
  floating-point sums (qpipe_tests/test_distributed.py measures it).
- BatchNorm normalizes with the statistics of the whole batch across the ranks (``SyncBatchNorm1d``,
  which also runs on the CPU, unlike torch's), so the MLP splits too.
- Every rank scores the whole valid set; rank 0's numbers are broadcast, so early stopping and the
  LR scheduler take the same decision on every rank whatever the rounding.
- Dropout draws its masks from a per-rank stream: with dropout the run is statistically equivalent
  to one process, not equal. Whole-day batches (GATs, HIST) and TabNet's ghost BatchNorm cannot be
  split; the config refuses them (qpipe.models.config).

The checkpoint step launches the ranks with ``train_processes``: it writes the frames and config to a
work dir (qpipe.training.handoff), runs ``python -m torch.distributed.run --standalone --nproc_per_node K
-m qpipe.training.distributed <workdir>`` (through Dagster Pipes there), and reads back what rank 0
wrote. Only rank 0 opens the Pipes connection: every rank inherits DAGSTER_PIPES_* from torchrun, and
each that opened it would append its own "opened"/"closed" messages and log lines to the one messages
file, whose reader expects a single writer (it warns of messages "after closed" and logs each line K
times). Backend: NCCL on CUDA (rank i on cuda:i of the GPUs the step claimed), gloo on the CPU.
"""

import dataclasses
import inspect
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from qpipe.compute import THREAD_VARIABLES
from qpipe.models.config import ModelConfig
from qpipe.training import handoff
from qpipe.training.engine import OneProcess, epoch_line, train
from qpipe.training.frame import TrainingFrame
from qpipe.training.reproducibility import draw_seed
from qpipe.training.result import TrainResult

# DDP's switch for its buffer broadcast before each forward: forward_sync_buffers since torch 2.13, broadcast_buffers
# before (torch>=2.11 is supported; GPU images ship older releases than the CPU wheel CI installs). The older switch
# also skips the broadcast at DDP's start, which changes nothing here: every rank builds the same buffers.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})

# Runs the torchrun command line with extra environment variables and Pipes extras; raises if it fails.
Runner = Callable[[list[str], dict[str, str], dict[str, Any]], None]


def processes(config: ModelConfig, device: str) -> int:
    """The ranks ``config``'s data_parall asks for with the step's ``device`` setting (1 = train in this process):
    true is every visible GPU (one process without CUDA); K GPUs must be visible for K ranks on CUDA."""
    requested = config.params["data_parall"]
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    visible = torch.cuda.device_count() if cuda else 0
    if requested is None:
        return 1
    if not cuda and device not in ("auto", "cpu"):
        raise ValueError(f"data_parall = {requested!r} trains on CUDA GPUs or CPU processes, not on device {device!r}")
    if requested is True:
        return max(visible, 1)
    if cuda and requested > visible:
        raise ValueError(f"data_parall = {requested} trains on {requested} GPUs, but {visible} are visible here")
    return requested


def train_processes(config: ModelConfig, train_frame: TrainingFrame, valid_frame: TrainingFrame | None, *,
                    devices: list[str], threads: int, run: Runner | None = None, root: Path | None = None) -> TrainResult:
    """Train on ``len(devices)`` ranks ("cpu" each, or the "cuda:i" the step claimed) and return rank 0's result.

    ``threads`` is the step's budget: CPU ranks get an equal share of it. ``run`` launches the command (default: a
    plain subprocess; the checkpoint step passes a Dagster Pipes one); the work dir goes under ``root`` (default tmp).
    """
    if config.params["batch_size"] < len(devices):
        raise ValueError(f"batch_size = {config.params['batch_size']} cannot be split across {len(devices)} processes")
    seed = config.params["seed"] if config.params["seed"] is not None else draw_seed()
    cuda = devices[0].startswith("cuda")
    per_rank = threads if cuda else max(1, threads // len(devices))
    env = {name: str(per_rank) for name in THREAD_VARIABLES}
    if cuda:
        env["CUDA_VISIBLE_DEVICES"] = _visible_devices(devices)
    with tempfile.TemporaryDirectory(prefix="qpipe-data-parallel-", dir=root) as name:
        folder = Path(name)
        seeded = ModelConfig(config.model, config.feature_set, config.step_len, {**config.params, "seed": seed})
        handoff.write_job(folder, handoff.Job(seeded, train_frame, valid_frame, "cuda" if cuda else "cpu", per_rank))
        try:
            (run or _subprocess)(torchrun_command(len(devices), folder), env, {"workdir": str(folder)})
        except Exception as failure:
            errors = sorted(folder.glob("error-rank*.txt"))
            if errors:
                raise RuntimeError(f"data-parallel training on {len(devices)} processes failed: "
                                   + "; ".join(path.read_text().strip() for path in errors)) from failure
            raise
        result = handoff.read_result(folder)
    return dataclasses.replace(result, device=",".join(devices) if cuda else "cpu")


def torchrun_command(ranks: int, folder: Path) -> list[str]:
    """torchrun of this interpreter (the venv's torch, not whatever ``torchrun`` is first on PATH), its logs in the
    work dir (by default it leaves a torchelastic_* folder in tmp per run)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(ranks), "--log-dir", str(folder / "torchrun"), "-m", "qpipe.training.distributed",
            str(folder)]


class Rank(OneProcess):
    """The engine's hooks for rank ``rank`` of ``world_size`` in the default process group."""

    def __init__(self, rank: int, world_size: int, seed: int, device: torch.device):
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = device  # where collectives' small tensors live (NCCL wants them on the GPU)

    def wrap(self, model: nn.Module) -> nn.Module:
        sync_batch_norm(model)
        if self.rank:  # dropout masks from this rank's own stream (rank 0's is the single-process one)
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.rank]).generate_state(1)[0]))
        # static_graph: DDP learns in the first step which parameters the forward pass leaves out (Qlib's Transformer
        # keeps an encoder_layer that nn.TransformerEncoder only copies); their grad stays None, as in one process, so
        # Adam leaves them alone. No buffer sync: BatchNorm buffers are equal on every rank by construction.
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None, static_graph=True,
            **_NO_BUFFER_SYNC)
        ddp.register_comm_hook(None, _sum_gradients)
        return ddp

    def shard(self, positions: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known = (~torch.isnan(label.index_select(0, positions))).sum()  # the whole batch's, known to every rank
        return positions.tensor_split(self.world_size)[self.rank], known

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def agree(self, *values: float) -> tuple[float, ...]:
        numbers = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(numbers, 0)
        return tuple(numbers.tolist())


def _sum_gradients(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: the sum of the ranks' gradients (DDP's default divides it by K)."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda done: done.value()[0])


class _AllSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the ranks' gradients summed (the total loss is the sum of the ranks')."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that trains on the statistics of the whole batch across the ranks (mean, then the variance of
    the centred rows, each an all-reduced sum), in float32 on any device; evaluation is BatchNorm1d's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        dims, shape = [0, *range(2, x.dim())], [1, -1, *[1] * (x.dim() - 2)]
        rows = torch.tensor(float(x.numel() // x.size(1)), dtype=torch.float64, device=x.device)
        dist.all_reduce(rows)
        n = rows.item()
        values = x.float()
        mean = _AllSum.apply(values.sum(dims)) / n
        centred = values - mean.view(shape)
        var = _AllSum.apply(centred.square().sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                self.running_var.mul_(1 - factor).add_(var * (n / (n - 1)), alpha=factor)  # unbiased, as BatchNorm
        return out.to(x.dtype)


def sync_batch_norm(model: nn.Module) -> None:
    """Replace every BatchNorm1d in ``model`` by a SyncBatchNorm1d holding the same parameters and buffers."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm1d:
            synced = SyncBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                     device=child.running_mean.device if child.running_mean is not None else None)
            synced.load_state_dict(child.state_dict())
            if child.affine:
                synced.weight, synced.bias = child.weight, child.bias  # the same Parameters (an optimizer may hold them)
            synced.train(child.training)
            setattr(model, name, synced)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm1d):
            raise ValueError(f"data-parallel training synchronizes BatchNorm1d only; {name} is a {type(child).__name__}")
        else:
            sync_batch_norm(child)


def main(argv: list[str] | None = None) -> None:
    """One rank, as torchrun starts it: ``python -m qpipe.training.distributed <workdir>``."""
    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        job = handoff.read_job(folder)
        torch.set_num_threads(job.threads)
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if job.device == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        try:
            with _reporter(rank) as log:
                if log is not None:
                    log(f"data-parallel training on {world_size} processes ({dist.get_backend()}, {job.device})")
                result = train(job.config, job.train, job.valid, device=device,
                               parallel=Rank(rank, world_size, job.config.params["seed"], device),
                               on_epoch=None if log is None else lambda metrics: log(epoch_line(metrics)),
                               on_progress=None if log is None else lambda progress: log(progress.line()), log=log)
                if rank == 0:
                    handoff.write_result(folder, result)
        finally:
            dist.destroy_process_group()
    except BaseException as error:
        (folder / f"error-rank{rank}.txt").write_text(f"rank {rank}: {''.join(traceback.format_exception_only(error)).strip()}")
        raise


@contextmanager
def _reporter(rank: int) -> Iterator[Callable[[str], None] | None]:
    """Rank 0's log: the Dagster Pipes connection when launched through Pipes, else stderr; no log on other ranks."""
    if rank:
        yield None
        return
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield lambda line: print(line, file=sys.stderr, flush=True)
        return
    with open_dagster_pipes() as pipes:
        yield pipes.log.info


def _visible_devices(devices: list[str]) -> str:
    """CUDA_VISIBLE_DEVICES for the ranks: the claimed cuda:i, as this process's own CUDA_VISIBLE_DEVICES names them."""
    indices = [int(device.split(":")[1]) if ":" in device else 0 for device in devices]
    own = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = own.split(",") if own else [str(i) for i in range(max(indices) + 1)]
    return ",".join(names[i].strip() for i in indices)


def _subprocess(command: list[str], env: Mapping[str, str], extras: Mapping[str, Any]) -> None:
    subprocess.run(command, env={**os.environ, **env}, check=True)


if __name__ == "__main__":
    main()
