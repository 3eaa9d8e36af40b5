"""Self-supervised pretraining of an encoder by masked-feature reconstruction (TabNet, Arik & Pfister
2019, §"Tabular self-supervised learning"), as Qlib's TabnetModel.pretrain_fn runs it.

Each batch hides a Bernoulli(``ps``) share of every row's features; the encoder sees the rest (and
the hidden ones as zero attention priors), a decoder reconstructs the features, and the loss is the
squared reconstruction error of the hidden features, each column scaled by the spread of the
reconstruction over the batch (Qlib's formula). Adam or SGD as configured, the last incomplete
batch dropped, the best encoder by the valid loss kept; unlike Qlib, the early-stopping counter is
reset by an improvement.
"""

import math
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch import nn

from qpipe.training.progress import ProgressCallback, ProgressClock
from qpipe.training.samplers import Sampler


def reconstruction_loss(hidden_truth: torch.Tensor, reconstruction: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """sum(((x*S - f) * S / sd(f))^2), sd(f) = the column's root sum of squared deviations over the batch."""
    spread = torch.sqrt(torch.sum(torch.square(reconstruction - reconstruction.mean(dim=0)), dim=0))
    return torch.sum(torch.square((hidden_truth - reconstruction) * hidden / spread))


def _masked_batch(x: torch.Tensor, ps: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    hidden = torch.bernoulli(torch.full(x.shape, ps), generator=generator).to(x.device)
    return x * (1 - hidden), x * hidden, hidden


def _epoch_loss(encoder: nn.Module, decoder: nn.Module, samples: Sampler, batches: Iterator[torch.Tensor], ps: float,
                generator: torch.Generator, optimizer: torch.optim.Optimizer | None,
                after_batch: Callable[[int], None] | None = None) -> float:
    total, count = 0.0, 0
    for positions in batches:
        shown, hidden_truth, hidden = _masked_batch(samples.gather(positions), ps, generator)
        loss = reconstruction_loss(hidden_truth, decoder(encoder(shown, 1 - hidden)), hidden)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total, count = total + loss.item(), count + 1
        if after_batch is not None:
            after_batch(count)
    return total / max(count, 1)


def pretrain(model: nn.Module, params: dict[str, Any], train_set: Sampler, valid_set: Sampler | None,
             generator: torch.Generator, log: Callable[[str], None] | None = None,
             on_progress: ProgressCallback | None = None) -> list[dict[str, float]]:
    """Pretrain ``model.model`` (the encoder) with ``model.make_decoder()``; returns per-epoch losses."""
    encoder = model.model
    device = next(model.parameters()).device
    decoder = model.make_decoder().to(device)
    optimizer = {"adam": torch.optim.Adam, "gd": torch.optim.SGD}[params["optimizer"]](
        [*encoder.parameters(), *decoder.parameters()], lr=params["lr"])
    batch_size, ps = params["batch_size"], params["ps"]
    steps = train_set.steps_per_pass(batch_size)
    batches = train_set.train_batches(batch_size, generator)
    best_loss, best_state, stale, history = math.inf, None, 0, []
    clock = ProgressClock("pretrain", params["pretrain_n_epochs"], steps, on_progress)
    for epoch in range(1, params["pretrain_n_epochs"] + 1):
        started = time.perf_counter()
        encoder.train(), decoder.train()
        train_loss = _epoch_loss(encoder, decoder, train_set, islice(batches, steps), ps, generator, optimizer,
                                 lambda batch, epoch=epoch: clock.tick(epoch, batch))
        valid_loss = math.nan
        if valid_set is not None and valid_set.n >= batch_size:
            encoder.eval(), decoder.eval()
            with torch.no_grad():
                full = (p for p in valid_set.eval_batches(batch_size) if len(p) == batch_size)
                valid_loss = _epoch_loss(encoder, decoder, valid_set, full, ps, generator, None)
        score = valid_loss if not math.isnan(valid_loss) else train_loss
        if score < best_loss:
            best_loss, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        else:
            stale += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                        "seconds": time.perf_counter() - started})
        if log is not None:
            log(f"pretrain epoch {epoch:>3}  train loss {train_loss:.4f}  valid loss {valid_loss:.4f}  "
                f"{history[-1]['seconds']:.1f}s  best {best_loss:.4f}")
        if stale >= params["early_stop"]:
            break
    if best_state is not None:
        encoder.load_state_dict(best_state)
    return history
