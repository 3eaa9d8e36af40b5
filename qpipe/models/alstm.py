"""ALSTM: Qlib's ALSTMModel (qlib/contrib/model/pytorch_alstm.py and pytorch_alstm_ts.py).

Fixed Qlib bug: Qlib's ALSTM wrapper never passes ``rnn_type`` to the network, so the YAML's
``rnn_type`` lands in ``**kwargs`` and the recurrent layer is always a GRU. Here ``rnn_type``
("GRU" or "LSTM") is honoured; the benchmark configs ask for "GRU", so they are unchanged (``qpipe qrun`` reports
another rnn_type as changed from Qlib's run).
"""

from typing import Literal

import torch
from torch import nn

from qpipe.models.recurrent import float32_rnn
from qpipe.models.spec import ModelSpec, Preset


class ALSTMModel(nn.Module):
    """Linear+tanh input map -> RNN -> temporal attention; the head reads [last state, attended state]."""

    def __init__(
        self,
        d_feat: int = 6,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        rnn_type: Literal["GRU", "LSTM"] = "GRU",
    ):
        super().__init__()
        self.net = nn.Sequential()
        self.net.add_module("fc_in", nn.Linear(d_feat, hidden_size))
        self.net.add_module("act", nn.Tanh())
        rnn_class = {"GRU": nn.GRU, "LSTM": nn.LSTM}[rnn_type]
        self.rnn = rnn_class(input_size=hidden_size, hidden_size=hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout)
        self.fc_out = nn.Linear(hidden_size * 2, 1)
        self.att_net = nn.Sequential()
        self.att_net.add_module("att_fc_in", nn.Linear(hidden_size, hidden_size // 2))
        self.att_net.add_module("att_dropout", nn.Dropout(dropout))
        self.att_net.add_module("att_act", nn.Tanh())
        self.att_net.add_module("att_fc_out", nn.Linear(hidden_size // 2, 1, bias=False))
        self.att_net.add_module("att_softmax", nn.Softmax(dim=1))  # over time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rnn_out, _ = float32_rnn(self.rnn, self.net(x))  # [B, T, H]
        attention = self.att_net(rnn_out)  # [B, T, 1]
        attended = (rnn_out * attention).sum(dim=1)  # [B, H]
        return self.fc_out(torch.cat((rnn_out[:, -1, :], attended), dim=1)).squeeze(-1)


def _rnn_type_changed(rnn_type: str) -> str:
    """How qpipe's ALSTM differs from Qlib's for this rnn_type (see the module docstring)."""
    if str(rnn_type).upper() == "GRU":
        return ""
    return (f"qpipe builds an {rnn_type} layer; Qlib's ALSTM never passes rnn_type to ALSTMModel and always trains a "
            "GRU (set GRU to train as Qlib does)")


SPEC = ModelSpec(
    name="alstm",
    net=ALSTMModel,
    sampler="sequence",
    qlib_classes=("ALSTM",),
    qlib_networks=("qlib.contrib.model.pytorch_alstm.ALSTMModel", "qlib.contrib.model.pytorch_alstm_ts.ALSTMModel"),
    presets={
        "alpha360": Preset(None, {
            "d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200, "lr": 1e-3,
            "early_stop": 20, "batch_size": 800, "metric": "loss", "loss": "mse", "rnn_type": "GRU",
        }),
        "alpha158": Preset(20, {
            "d_feat": 20, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200, "lr": 1e-3,
            "early_stop": 10, "batch_size": 800, "metric": "loss", "loss": "mse", "rnn_type": "GRU",
        }),
    },
    qlib_changed={"rnn_type": _rnn_type_changed},
)
