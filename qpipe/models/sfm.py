"""SFM: Qlib's SFM_Model (qlib/contrib/model/pytorch_sfm.py), Zhang, Aggarwal & Qi, KDD 2017,
"Stock Price Prediction via Discovering Multi-Frequency Trading Patterns".

The State Frequency Memory recurrent network: its memory is a [hidden x freq_dim] matrix of
complex states, one per frequency w_k = k / freq_dim; a joint state-and-frequency forget gate
decays it, the input gate writes into every frequency rotated by e^(2 pi i t w_k), and the
hidden state reads the amplitudes |S|^2 through a learned combination over frequencies.

Differences from Qlib, deliberate: ``dropout_W``/``dropout_U`` (no-ops in Qlib, whose masks are
constant 1) and ``eval_steps`` (unused) are accepted from configs and dropped; the memory stays
float32, where Qlib's float64 frequency table silently promotes it to float64.
"""

import math
from typing import Any

import torch
from torch import nn
from torch.nn import init

from qpipe.models.spec import ModelSpec, Preset


def _xavier(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(init.xavier_uniform_(torch.empty(rows, cols)))


def _orthogonal(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(init.orthogonal_(torch.empty(rows, cols)))


class SFMModel(nn.Module):
    def __init__(self, d_feat: int = 6, output_dim: int = 1, freq_dim: int = 10, hidden_size: int = 64):
        super().__init__()
        self.hidden_size, self.freq_dim = hidden_size, freq_dim
        # Qlib's parameters, in its order (the initialization draws depend on it).
        self.W_i, self.U_i = _xavier(d_feat, hidden_size), _orthogonal(hidden_size, hidden_size)
        self.b_i = nn.Parameter(torch.zeros(hidden_size))
        self.W_ste, self.U_ste = _xavier(d_feat, hidden_size), _orthogonal(hidden_size, hidden_size)
        self.b_ste = nn.Parameter(torch.ones(hidden_size))
        self.W_fre, self.U_fre = _xavier(d_feat, freq_dim), _orthogonal(hidden_size, freq_dim)
        self.b_fre = nn.Parameter(torch.ones(freq_dim))
        self.W_c, self.U_c = _xavier(d_feat, hidden_size), _orthogonal(hidden_size, hidden_size)
        self.b_c = nn.Parameter(torch.zeros(hidden_size))
        self.W_o, self.U_o = _xavier(d_feat, hidden_size), _orthogonal(hidden_size, hidden_size)
        self.b_o = nn.Parameter(torch.zeros(hidden_size))
        self.U_a = _orthogonal(freq_dim, 1)
        self.b_a = nn.Parameter(torch.zeros(hidden_size))
        self.W_p = _xavier(hidden_size, output_dim)
        self.b_p = nn.Parameter(torch.zeros(output_dim))
        self.activation = nn.Tanh()
        self.inner_activation = nn.Hardsigmoid()
        self.fc_out = nn.Linear(output_dim, 1)
        self.register_buffer("frequency", torch.arange(freq_dim, dtype=torch.float32) / freq_dim, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = x.shape  # [B, T, d_feat]
        h = x.new_zeros(batch, self.hidden_size)
        s_re = s_im = x.new_zeros(batch, self.hidden_size, self.freq_dim)
        gate = self.inner_activation
        for t in range(steps):
            x_t = x[:, t, :]
            i = gate(x_t @ self.W_i + self.b_i + h @ self.U_i)
            ste = gate(x_t @ self.W_ste + self.b_ste + h @ self.U_ste)  # forget, per state
            fre = gate(x_t @ self.W_fre + self.b_fre + h @ self.U_fre)  # forget, per frequency
            forget = ste.unsqueeze(2) * fre.unsqueeze(1)  # [B, H, K]
            c = (i * self.activation(x_t @ self.W_c + self.b_c + h @ self.U_c)).unsqueeze(2)
            omega = 2 * math.pi * (t + 1) * self.frequency
            s_re = forget * s_re + c * torch.cos(omega)
            s_im = forget * s_im + c * torch.sin(omega)
            amplitude = s_re.square() + s_im.square()  # [B, H, K]
            a = self.activation((amplitude @ self.U_a).squeeze(2) + self.b_a)
            o = gate(x_t @ self.W_o + self.b_o + h @ self.U_o)
            h = o * a
        p = h @ self.W_p + self.b_p
        return self.fc_out(p).squeeze(-1)


QLIB_NO_OPS = {  # accepted from Qlib configs and dropped (see the module docstring)
    "dropout_W": "a no-op in Qlib too (its dropout masks are constant 1): dropped",
    "dropout_U": "a no-op in Qlib too (its dropout masks are constant 1): dropped",
    "eval_steps": "unused by Qlib's SFM too: dropped",
}


def from_qlib(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop Qlib's no-op knobs."""
    return {k: v for k, v in kwargs.items() if k not in QLIB_NO_OPS}


SPEC = ModelSpec(
    name="sfm",
    net=SFMModel,
    sampler="sequence",
    qlib_classes=("SFM",),
    qlib_networks=("qlib.contrib.model.pytorch_sfm.SFM_Model",),
    presets={
        "alpha360": Preset(None, {
            "d_feat": 6, "hidden_size": 64, "output_dim": 32, "freq_dim": 25, "n_epochs": 20, "lr": 1e-3,
            "batch_size": 1600, "early_stop": 20, "loss": "mse", "optimizer": "adam",
        }),
    },
    class_defaults={"n_epochs": 200, "lr": 1e-3, "batch_size": 2000, "early_stop": 20, "metric": "loss", "loss": "mse",
                    "optimizer": "gd"},
    from_qlib=from_qlib,
    qlib_not_read=QLIB_NO_OPS,
)
