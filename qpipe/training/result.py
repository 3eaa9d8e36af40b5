"""What training returns: the best weights and the record of how they were found."""

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TrainResult:
    state_dict: dict[str, torch.Tensor]  # the best epoch's weights, on the CPU
    best_epoch: int  # 1-based
    history: list[dict[str, Any]]  # one entry per epoch (see epoch_line)
    best_score: float  # -valid loss (metric "loss") or valid IC (metric "ic"); NaN without a valid set
    seconds_per_epoch: float
    n_params: int
    device: str
    seed: int
    pretrain_history: list[dict[str, Any]] = field(default_factory=list)  # self-supervised epochs, if any
    # The valid loss of a placebo that scores every stock 0 (no skill; labels are normalized per day): a trained
    # model's best valid loss above it has learnt nothing that generalizes. NaN without a valid set.
    placebo_valid_loss: float = float("nan")
    processes: int = 1  # data-parallel ranks that trained it (Qlib's data_parall), 1 = one process
