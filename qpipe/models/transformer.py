"""Transformer: Qlib's TransformerModel (qlib/contrib/model/pytorch_transformer.py and pytorch_transformer_ts.py).

A linear map of each time step's features to d_model, sinusoidal positions, PyTorch's
post-LN TransformerEncoder (sequence-first, feed-forward width 2048, no mask), and a linear
head on the last time step. Qlib's Adam ``reg`` is the weight decay.
"""

import math
from typing import Any

import torch
from torch import nn

from qpipe.models.spec import ModelSpec, Preset


class PositionalEncoding(nn.Module):
    """The sinusoid table of "Attention Is All You Need", added to [T, B, d_model] inputs."""

    def __init__(self, d_model: int, max_len: int = 1000):
        super().__init__()
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0).transpose(0, 1))  # [max_len, 1, d_model], in Qlib's state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.size(0), :]


class Transformer(nn.Module):
    def __init__(self, d_feat: int = 20, d_model: int = 64, nhead: int = 2, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.feature_layer = nn.Linear(d_feat, d_model)
        self.pos_encoder = PositionalEncoding(d_model)
        self.encoder_layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=nhead, dropout=dropout)
        self.transformer_encoder = nn.TransformerEncoder(self.encoder_layer, num_layers=num_layers,
                                                         enable_nested_tensor=False)
        self.decoder_layer = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self.pos_encoder(self.feature_layer(x).transpose(0, 1))  # [B, T, F] -> [T, B, d_model]
        output = self.transformer_encoder(src)
        return self.decoder_layer(output[-1]).squeeze(-1)


def from_qlib(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Qlib's ``reg`` is Adam's weight decay."""
    out = dict(kwargs)
    if "reg" in out:
        out["weight_decay"] = out.pop("reg")
    return out


# TransformerModel's class defaults (pytorch_transformer.py); the _ts class differs only in batch_size 8192.
CLASS_DEFAULTS = {"d_feat": 20, "d_model": 64, "batch_size": 2048, "nhead": 2, "num_layers": 2, "dropout": 0.0,
                  "n_epochs": 100, "lr": 1e-4, "metric": "loss", "early_stop": 5, "loss": "mse", "optimizer": "adam",
                  "reg": 1e-3}
TS_CLASS_DEFAULTS = {"batch_size": 8192}

PRESETS = {  # the benchmark YAMLs (Localformer's are the same): d_feat and seed 0 over the class defaults
    "alpha360": Preset(None, {"d_feat": 6, "seed": 0}),
    "alpha158": Preset(20, {"d_feat": 20, "seed": 0}),
}

SPEC = ModelSpec(
    name="transformer",
    net=Transformer,
    sampler="sequence",
    qlib_classes=("TransformerModel",),
    qlib_networks=("qlib.contrib.model.pytorch_transformer.Transformer",
                   "qlib.contrib.model.pytorch_transformer_ts.Transformer"),
    presets=PRESETS,
    class_defaults=CLASS_DEFAULTS,
    ts_class_defaults=TS_CLASS_DEFAULTS,
    from_qlib=from_qlib,
)
