"""GATs: Qlib's GATModel (qlib/contrib/model/pytorch_gats.py and pytorch_gats_ts.py).

An RNN encodes each stock's window; one graph-attention step over all stocks of the same day
(fully connected, self included) adds the attention-weighted sum of the encodings to each one;
a hidden layer and a linear head score it. One batch is one whole day ("daily" sampler).

The attention logits are computed from two N-vectors (a's halves times the transformed states)
instead of Qlib's [N, N, 2H] concatenation: the same values up to float rounding, in O(N^2) memory.

Fixed Qlib bug: GATs_ts batched one stock's consecutive days instead of one day's stocks
(microsoft/qlib#2319); here both variants batch whole days. Qlib's pretrained base RNN
(``model_path``) is a qpipe LSTM/GRU checkpoint here: the engine copies its rnn.* and fc_out.*.
"""

from typing import Literal

import torch
from torch import nn

from qpipe.models.recurrent import float32_rnn
from qpipe.models.spec import ModelSpec, Preset


def base_rnn(base_model: str, d_feat: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    """The stock encoder of GATs and HIST: Qlib's GRUModel / LSTMModel recurrent layer."""
    rnn_class = {"GRU": nn.GRU, "LSTM": nn.LSTM}[base_model]
    return rnn_class(input_size=d_feat, hidden_size=hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout)


class GATModel(nn.Module):
    def __init__(self, d_feat: int = 6, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0,
                 base_model: Literal["GRU", "LSTM"] = "GRU"):
        super().__init__()
        self.rnn = base_rnn(base_model, d_feat, hidden_size, num_layers, dropout)
        self.transformation = nn.Linear(hidden_size, hidden_size)
        self.a = nn.Parameter(torch.randn(hidden_size * 2, 1))
        self.fc = nn.Linear(hidden_size, hidden_size)
        self.fc_out = nn.Linear(hidden_size, 1)
        self.leaky_relu = nn.LeakyReLU()
        self.softmax = nn.Softmax(dim=1)

    def attention(self, hidden: torch.Tensor) -> torch.Tensor:
        """att[i, j] = softmax over j of LeakyReLU(a . [W h_j + b ; W h_i + b]), for the N stocks of one day."""
        x = self.transformation(hidden)  # [N, H]
        n, h = x.shape
        neighbour_score = x @ self.a[:h]  # a's first half meets h_j
        own_score = x @ self.a[h:]  # its second half h_i
        return self.softmax(self.leaky_relu(own_score + neighbour_score.T))  # [N (i), N (j)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = float32_rnn(self.rnn, x)  # x: [N, T, d_feat], one day's stocks
        hidden = out[:, -1, :]
        hidden = self.attention(hidden) @ hidden + hidden
        return self.fc_out(self.leaky_relu(self.fc(hidden))).squeeze(-1)


PRESET = {"hidden_size": 64, "num_layers": 2, "dropout": 0.7, "n_epochs": 200, "lr": 1e-4, "metric": "loss",
          "loss": "mse", "base_model": "LSTM"}

SPEC = ModelSpec(
    name="gats",
    net=GATModel,
    sampler="daily",
    qlib_classes=("GATs",),
    qlib_networks=("qlib.contrib.model.pytorch_gats.GATModel", "qlib.contrib.model.pytorch_gats_ts.GATModel"),
    presets={
        "alpha360": Preset(None, {**PRESET, "d_feat": 6, "early_stop": 20}),
        "alpha158": Preset(20, {**PRESET, "d_feat": 20, "early_stop": 10}),
    },
    class_defaults={"n_epochs": 200, "lr": 0.001, "early_stop": 20, "metric": "loss", "loss": "mse", "optimizer": "adam"},
)
