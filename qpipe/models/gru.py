"""GRU: Qlib's GRUModel (qlib/contrib/model/pytorch_gru.py and pytorch_gru_ts.py)."""

import torch
from torch import nn

from qpipe.models.recurrent import float32_rnn
from qpipe.models.spec import ModelSpec, Preset


class GRUModel(nn.Module):
    """A stacked GRU over [B, T, d_feat]; a linear head reads the last time step's hidden state."""

    def __init__(self, d_feat: int = 6, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.GRU(input_size=d_feat, hidden_size=hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout)
        self.fc_out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = float32_rnn(self.rnn, x)
        return self.fc_out(out[:, -1, :]).squeeze(-1)


SPEC = ModelSpec(
    name="gru",
    net=GRUModel,
    sampler="sequence",
    qlib_classes=("GRU",),
    qlib_networks=("qlib.contrib.model.pytorch_gru.GRUModel", "qlib.contrib.model.pytorch_gru_ts.GRUModel"),
    presets={
        "alpha360": Preset(None, {
            "d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200, "lr": 1e-3,
            "early_stop": 20, "batch_size": 800, "metric": "loss", "loss": "mse",
        }),
        "alpha158": Preset(20, {
            "d_feat": 20, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200, "lr": 2e-4,
            "early_stop": 10, "batch_size": 800, "metric": "loss", "loss": "mse",
        }),
    },
)
