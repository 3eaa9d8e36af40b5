"""Localformer: Qlib's LocalformerModel (qlib/contrib/model/pytorch_localformer.py and pytorch_localformer_ts.py).

The Transformer with two additions: before each encoder layer a 1-D convolution over time
(kernel 3) whose output is added to the layer's input, the last one added again to the
encoder's output; and a GRU over the encoded sequence before the linear head.
"""

import copy

import torch
from torch import nn

from qpipe.models.recurrent import float32_rnn
from qpipe.models.spec import ModelSpec
from qpipe.models.transformer import CLASS_DEFAULTS, PRESETS, TS_CLASS_DEFAULTS, PositionalEncoding, from_qlib


class LocalformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        conv = nn.Conv1d(d_model, d_model, 3, 1, 1)
        self.conv = nn.ModuleList(copy.deepcopy(conv) for _ in range(num_layers))

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        output = out = src  # [T, B, d_model]
        for layer, conv in zip(self.layers, self.conv):
            out = conv(output.permute(1, 2, 0)).permute(2, 0, 1)  # convolve over time: [B, d, T]
            output = layer(output + out)
        return output + out


class Localformer(nn.Module):
    def __init__(self, d_feat: int = 20, d_model: int = 64, nhead: int = 2, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.GRU(input_size=d_model, hidden_size=d_model, num_layers=num_layers, batch_first=False, dropout=dropout)
        self.feature_layer = nn.Linear(d_feat, d_model)
        self.pos_encoder = PositionalEncoding(d_model)
        self.encoder_layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=nhead, dropout=dropout)
        self.transformer_encoder = LocalformerEncoder(self.encoder_layer, num_layers=num_layers, d_model=d_model)
        self.decoder_layer = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self.pos_encoder(self.feature_layer(x).transpose(0, 1))  # [B, T, F] -> [T, B, d_model]
        output, _ = float32_rnn(self.rnn, self.transformer_encoder(src))
        return self.decoder_layer(output[-1]).squeeze(-1)


SPEC = ModelSpec(
    name="localformer",
    net=Localformer,
    sampler="sequence",
    qlib_classes=("LocalformerModel",),
    qlib_networks=("qlib.contrib.model.pytorch_localformer.Transformer",
                   "qlib.contrib.model.pytorch_localformer_ts.Transformer"),
    presets=PRESETS,
    class_defaults=CLASS_DEFAULTS,
    ts_class_defaults=TS_CLASS_DEFAULTS,
    from_qlib=from_qlib,
)
