"""TinyNet: one tanh hidden layer over a row of features. A network written outside qpipe, registered with the
entry point group ``qpipe.models``: qpipe then gives it a checkpoint, prediction, IC and backtest asset."""

import torch
from torch import nn

from qpipe.models.spec import ModelSpec, Preset


class TinyNet(nn.Module):
    def __init__(self, d_feat: int = 158, hidden_size: int = 16, dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.Linear(d_feat, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.hidden(x)))).squeeze(-1)


SPEC = ModelSpec(
    name="tinynet",
    net=TinyNet,
    sampler="flat",  # rows [B, F], as DatasetH gives them
    qlib_classes=("TinyNet",),
    presets={
        "alpha158": Preset(None, {"d_feat": 158, "hidden_size": 16, "n_epochs": 20, "lr": 1e-3, "batch_size": 512,
                                  "early_stop": 5}),
        "alpha360": Preset(None, {"d_feat": 360, "hidden_size": 16, "n_epochs": 20, "lr": 1e-3, "batch_size": 512,
                                  "early_stop": 5}),
    },
)
