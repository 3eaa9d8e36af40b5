"""The one training loop every architecture uses (Qlib's NN recipe, reference/qlib.md §6.0).

Per epoch: shuffled batches of ``batch_size`` (the last incomplete one dropped), MSE over the
rows whose label is known, ``clip_grad_value_(3.0)``, Adam or SGD; then the validation set is
scored once. Early stopping keeps the weights of the best valid score (strict ``>``, patience
``early_stop``; score = -valid loss, or the mean daily valid IC with ``metric: ic``) in memory
and restores them at the end.

Fixed or dropped Qlib behaviour:
- Qlib re-scores the whole training set every epoch only to log it (~40% of the epoch); the
  train loss logged here is the mean over the epoch's training batches.
- Qlib drops the last partial batch when scoring the valid set; here every valid row counts.
- Qlib's GRU without a valid set reloads its untrained initial weights at the end; here training
  without a valid set keeps the final weights.
- A batch whose labels are all NaN gives loss 0 (Qlib: NaN, which poisons the weights).
- Qlib seeds numpy and torch only and shuffles with numpy; here python, numpy and torch are
  seeded and the batch order has its own torch.Generator, so CPU runs repeat byte for byte.
- Qlib pickles the whole model object; see qpipe.training.checkpoint for safetensors + JSON.

Data-parallel training (Qlib's ``data_parall``) runs this same loop on every rank: ``train`` takes
a ``OneProcess`` (the default) or a ``qpipe.training.distributed.Rank``, whose hooks shard each
batch, sum the gradients and agree on the validation numbers.
"""

import math
import time
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import nn

from qpipe.evaluation.ic import daily_ic
from qpipe.models.config import ModelConfig, build_model
from qpipe.models.registry import get_spec
from qpipe.training.checkpoint import load_checkpoint
from qpipe.training.frame import TrainingFrame
from qpipe.training.pretraining import pretrain
from qpipe.training.progress import ProgressCallback, ProgressClock, clock
from qpipe.training.reproducibility import draw_seed, repeatable_cuda, resolve_device, seed_everything
from qpipe.training.result import TrainResult
from qpipe.training.samplers import Sampler, make_sampler

CLIP_GRAD_VALUE = 3.0

EpochCallback = Callable[[dict[str, Any]], None]


class OneProcess:
    """The loop's data-parallel hooks for a single process: every batch whole, nothing to exchange.
    qpipe.training.distributed.Rank overrides them for one rank of K."""

    world_size = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training batches run through (the model itself, or its DistributedDataParallel)."""
        return model

    def shard(self, positions: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's share of a batch's positions, and the count of known labels its loss is divided by
        (None: its own share's; a rank divides by the whole batch's, so the ranks' losses sum to the batch's)."""
        return positions, None

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes."""
        return value

    def agree(self, *values: float) -> tuple[float, ...]:
        """The validation numbers every process acts on (early stopping, the scheduler)."""
        return values


def warm_start(model: nn.Module, path: str) -> list[str]:
    """Copy the weights whose names the model shares with a qpipe checkpoint (Qlib's pretrained base:
    an LSTM's or GRU's rnn.* and fc_out.* into GATs or HIST); returns the names copied."""
    base = load_checkpoint(path)
    source, target = base.model.state_dict(), model.state_dict()
    shared = sorted(set(source) & set(target))
    mismatched = [k for k in shared if source[k].shape != target[k].shape]
    if not shared or mismatched:
        detail = (f"{mismatched[0]} is {tuple(source[mismatched[0]].shape)} there, {tuple(target[mismatched[0]].shape)} here"
                  if mismatched else "no weight names in common")
        params = base.config.params  # what it is, so the user sees which of base_model, hidden_size ... differs
        raise ValueError(f"model_path = {path!r} does not fit this model: it is a {base.config.model} checkpoint "
                         f"(hidden_size {params.get('hidden_size')}, num_layers {params.get('num_layers')}); {detail}")
    model.load_state_dict({**target, **{k: source[k].to(target[k].device) for k in shared}})
    return shared


def make_frame_sampler(config: ModelConfig, frame: TrainingFrame, device: torch.device) -> Sampler:
    """The sampler the config's architecture takes, after checking the frame's width against it."""
    spec = get_spec(config.model)
    params = config.params
    n_columns = len(frame.columns)
    width = "input_dim" if "input_dim" in params else "d_feat" if spec.sampler == "flat" and "d_feat" in params else None
    if width and params[width] != n_columns:  # (found in review: a flat plugin's d_feat failed in torch's words)
        raise ValueError(f"{width} = {params[width]} but the frame has {n_columns} feature columns")
    return make_sampler(frame, spec.sampler, device, step_len=config.step_len, d_feat=params.get("d_feat"),
                        with_concepts=spec.reads_concepts)


def train(
    config: ModelConfig,
    train_frame: TrainingFrame,
    valid_frame: TrainingFrame | None = None,
    *,
    device: str | torch.device = "auto",
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    parallel: OneProcess | None = None,
) -> TrainResult:
    """Train ``config``'s model; without a valid frame all ``n_epochs`` run and the last weights are kept.

    ``on_epoch`` gets each epoch's metrics; ``on_progress`` a Progress every PROGRESS_EVERY seconds;
    ``parallel`` makes this process one rank of a data-parallel group (qpipe.training.distributed).
    """
    params = config.params
    parallel = parallel or OneProcess()
    requested = params["data_parall"]
    if isinstance(requested, int) and not isinstance(requested, bool) and requested != parallel.world_size:
        raise ValueError(f"data_parall = {requested} but this training runs {parallel.world_size} process(es): "
                         "train data-parallel through qpipe.training.distributed.train_processes (the checkpoint step does)")
    target = resolve_device(device)
    if target.type == "cuda":
        repeatable_cuda()
    seed = params["seed"] if params["seed"] is not None else draw_seed()
    train_set = make_frame_sampler(config, train_frame, target)
    valid_set = make_frame_sampler(config, valid_frame, target) if valid_frame is not None else None
    batch_size = params["batch_size"]
    steps = params["steps_per_epoch"] or train_set.steps_per_pass(batch_size)

    generator = seed_everything(seed)
    model = build_model(config).to(target)
    if params["model_path"]:
        warm_start(model, params["model_path"])
    pretraining = pretrain(model, params, train_set, valid_set, generator, log, on_progress) if params["pretrain"] else []
    trainee = parallel.wrap(model)
    optimizer = _optimizer(params, model)
    scheduler = _scheduler(params, optimizer)
    batches = train_set.train_batches(batch_size, generator)
    best = _BestWeights()
    history: list[dict[str, Any]] = []
    clock = ProgressClock("train", params["n_epochs"], steps, on_progress)
    for epoch in range(1, params["n_epochs"] + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = _train_epoch(trainee, train_set, islice(batches, steps), optimizer,
                                  lambda batch, epoch=epoch: clock.tick(epoch, batch), params["amp"], parallel)
        validating = time.perf_counter()
        valid_loss = valid_ic = valid_ic_t = math.nan
        if valid_set is not None:
            valid_loss, valid_ic, valid_ic_t = parallel.agree(*_validate(model, valid_set, batch_size, params["amp"]))
            best.update(epoch, valid_ic if params["metric"] == "ic" else -valid_loss, model)
            if scheduler is not None:
                scheduler.step(valid_loss)
        metrics = {
            "epoch": epoch, "n_epochs": params["n_epochs"], "train_loss": train_loss, "valid_loss": valid_loss,
            "valid_ic": valid_ic, "valid_ic_t": valid_ic_t, "lr": lr,
            "seconds": time.perf_counter() - started, "valid_seconds": time.perf_counter() - validating,
            "best_epoch": best.epoch if valid_set is not None else epoch, "best_score": best.score,
        }
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if best.stale >= params["early_stop"]:
            break
    if valid_set is not None:
        if best.state is None:
            raise ValueError(f"{config.model}: the valid {params['metric']} was NaN at every epoch: the network scores "
                             f"NaN (training diverged at lr = {params['lr']:g}, or the network's output is NaN)")
        model.load_state_dict(best.state)

    return TrainResult(
        state_dict={k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
        best_epoch=history[-1]["best_epoch"],
        history=history,
        best_score=best.score,
        seconds_per_epoch=float(np.mean([m["seconds"] for m in history])),
        n_params=sum(p.numel() for p in model.parameters()),
        device=str(target),
        seed=seed,
        pretrain_history=pretraining,
        placebo_valid_loss=masked_mse(torch.zeros_like(valid_set.label), valid_set.label).item() if valid_set is not None else math.nan,
        processes=parallel.world_size,
    )


class _BestWeights:
    """Early-stopping state: the best valid score (strictly greater wins) and its weights, in memory."""

    def __init__(self) -> None:
        self.score = math.nan
        self.epoch = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.stale = 0  # epochs since the last improvement

    def update(self, epoch: int, score: float, model: nn.Module) -> None:
        if (self.state is None and not math.isnan(score)) or score > self.score:
            self.score, self.epoch, self.stale = score, epoch, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1


@torch.inference_mode()
def predict(model: nn.Module, frame: TrainingFrame, config: ModelConfig, batch_size: int | None = None) -> np.ndarray:
    """Scores for the frame's sample rows, in row order (eval mode, the last partial batch included)."""
    device = next(model.parameters()).device
    return _scores(model, make_frame_sampler(config, frame, device), batch_size or config.params["batch_size"],
                   config.params["amp"]).cpu().numpy()


def masked_mse(pred: torch.Tensor, label: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the rows whose label is not NaN (0 when there are none); ``count`` replaces the
    number of known labels as the divisor (a rank's share of a batch divides by the whole batch's)."""
    known = ~torch.isnan(label)
    error = torch.where(known, pred - label, 0.0)
    return error.square().sum() / (known.sum() if count is None else count).clamp(min=1)


def epoch_line(metrics: dict[str, Any]) -> str:
    """One log line per epoch, for on_epoch callbacks (the ETA assumes the remaining epochs run at this one's pace)."""
    left = (metrics["n_epochs"] - metrics["epoch"]) * metrics["seconds"]
    return (
        f"epoch {metrics['epoch']}/{metrics['n_epochs']} done  ETA {clock(left)}  valid IC {metrics['valid_ic']:+.4f}  "
        f"valid loss {metrics['valid_loss']:.6f}  train loss {metrics['train_loss']:.6f}  lr {metrics['lr']:.2e}  "
        f"{metrics['seconds']:.1f}s (valid {metrics['valid_seconds']:.1f}s)  best epoch {metrics['best_epoch']} "
        f"({metrics['best_score']:.6f})"
    )


def _optimizer(params: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    optimizer = {"adam": torch.optim.Adam, "gd": torch.optim.SGD}[params["optimizer"]]
    return optimizer(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])


def _scheduler(params: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """Qlib DNN's "default" scheduler, stepped on the valid loss."""
    if params["scheduler"] != "plateau":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=10, threshold=1e-4, min_lr=1e-5, eps=1e-8)


def autocast(device: torch.device, amp: str | None):
    """The forward pass's precision: float32, or bfloat16 autocast when ``amp`` is "bf16" (no loss scaling needed)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def _train_epoch(model: nn.Module, samples: Sampler, batches: Iterator[torch.Tensor], optimizer: torch.optim.Optimizer,
                 after_batch: Callable[[int], None], amp: str | None = None, parallel: OneProcess | None = None) -> float:
    """Mean training-batch loss (accumulated on the device: no sync per batch)."""
    parallel = parallel or OneProcess()
    model.train()
    label = samples.label
    total, count = torch.zeros((), device=label.device), 0
    for batch in batches:
        positions, known = parallel.shard(batch, label)
        with autocast(label.device, amp):
            pred = _forward(model, samples, positions)
        loss = masked_mse(pred.float(), label.index_select(0, positions), known)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), CLIP_GRAD_VALUE)
        optimizer.step()
        total += loss.detach()
        count += 1
        after_batch(count)
    return parallel.sum(total).item() / count


def _scores(model: nn.Module, samples: Sampler, batch_size: int, amp: str | None = None) -> torch.Tensor:
    model.eval()
    with autocast(samples.label.device, amp):
        return torch.cat([_forward(model, samples, positions).float() for positions in samples.eval_batches(batch_size)])


def _forward(model: nn.Module, samples: Sampler, positions: torch.Tensor) -> torch.Tensor:
    """The network's scores of the samples at ``positions``, one per sample (found in review: a network returning
    [B, 1] made the loss broadcast over [B, B], training on it in memory growing with the square of the batch)."""
    pred = model(*samples.inputs(positions))
    if pred.shape != positions.shape:
        raise ValueError(f"the network returns scores of shape {list(pred.shape)} for a batch of {len(positions)} "
                         f"samples: it must return one score per sample, shape [{len(positions)}] (for [B, 1]: "
                         ".squeeze(-1))")
    return pred


@torch.inference_mode()
def _validate(model: nn.Module, samples: Sampler, batch_size: int,
              amp: str | None = None) -> tuple[float, float, float]:
    """(valid loss over all known labels, mean daily Pearson IC, its t-statistic) of one pass over the valid set."""
    scores = _scores(model, samples, batch_size, amp)
    loss = masked_mse(scores, samples.label).item()
    ic = daily_ic(scores.cpu().numpy(), samples.label.cpu().numpy(), samples.dates)["IC"].dropna()
    t = ic.mean() / ic.std() * math.sqrt(len(ic)) if len(ic) > 1 and ic.std() > 0 else math.nan
    return loss, float(ic.mean()), float(t)
