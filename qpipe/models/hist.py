"""HIST: Qlib's HISTModel (qlib/contrib/model/pytorch_hist.py), Xu et al. 2021, "HIST: A Graph-based
Framework for Stock Trend Forecasting via Mining Concept-Oriented Shared Information".

An RNN encodes each stock; three modules split the encoding into information shared through
predefined concepts (each stock's concept memberships), information shared with hidden concepts
(each stock's most similar peer that day), and the stock's own; each contributes to the score.
One batch is one day's stocks, with their rows of the 0/1 stock-to-concept matrix.

Where the concepts come from: Qlib needs two .npy files (a CSI300 stock index and a Tushare
concept matrix it downloads at fit time); qpipe builds the matrix from ``raw/concepts`` (the
source's sectors and concepts), so HIST runs on any market. A stock without concepts has an
all-zero row (Qlib maps it to row 733, another stock's). Qlib's pretrained base RNN (``model_path``)
is a qpipe LSTM/GRU checkpoint here: the engine copies its rnn.* and fc_out.*.
"""

from typing import Any, Literal

import torch
from torch import nn

from qpipe.models.gats import base_rnn
from qpipe.models.recurrent import float32_rnn
from qpipe.models.spec import ModelSpec, Preset


def cos_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N, M] cosine similarities of the rows of x and y (Qlib's 1e-6 in the denominator)."""
    x_norm = torch.sqrt(torch.sum(x * x, dim=1)).reshape(-1, 1)
    y_norm = torch.sqrt(torch.sum(y * y, dim=1)).reshape(-1, 1)
    return x.mm(y.t()) / (x_norm.mm(y_norm.t()) + 1e-6)


def _xavier_linear(size: int) -> nn.Linear:
    layer = nn.Linear(size, size)
    nn.init.xavier_uniform_(layer.weight)
    return layer


class HISTModel(nn.Module):
    def __init__(self, d_feat: int = 6, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0,
                 base_model: Literal["GRU", "LSTM"] = "GRU"):
        super().__init__()
        self.rnn = base_rnn(base_model, d_feat, hidden_size, num_layers, dropout)
        # Qlib's layers, in its order (the initialization draws depend on it); the *_middle ones,
        # fc_indi_fore and fc_out_es/is/indi are unused there too, kept for its state-dict keys.
        for name in ("fc_es", "fc_is", "fc_es_middle", "fc_is_middle", "fc_es_fore", "fc_is_fore", "fc_indi_fore",
                     "fc_es_back", "fc_is_back", "fc_indi"):
            setattr(self, name, _xavier_linear(hidden_size))
        self.leaky_relu = nn.LeakyReLU()
        self.softmax_s2t = nn.Softmax(dim=0)
        self.softmax_t2s = nn.Softmax(dim=1)
        self.fc_out_es = nn.Linear(hidden_size, 1)
        self.fc_out_is = nn.Linear(hidden_size, 1)
        self.fc_out_indi = nn.Linear(hidden_size, 1)
        self.fc_out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor, concept_matrix: torch.Tensor) -> torch.Tensor:
        out, _ = float32_rnn(self.rnn, x)  # x: [N, T, d_feat], one day's stocks; concept_matrix: [N, K]
        x_hidden = out[:, -1, :]

        # Predefined concepts: each concept is its members' weighted mean state; each stock reads
        # the concepts in proportion to its cosine similarity with them.
        weights = concept_matrix / (concept_matrix.sum(0, keepdim=True) * concept_matrix + 1)
        concepts = weights.t().mm(x_hidden)
        concepts = concepts[concepts.sum(1) != 0]
        e_shared_info = self.fc_es(self.softmax_t2s(cos_similarity(x_hidden, concepts)).mm(concepts))
        e_shared_back = self.fc_es_back(e_shared_info)
        output_es = self.leaky_relu(self.fc_es_fore(e_shared_info))

        # Hidden concepts: what the predefined ones left, shared with each stock's nearest peer.
        i_shared_info = x_hidden - e_shared_back
        similarity = cos_similarity(i_shared_info, i_shared_info)
        n = similarity.shape[0]
        diagonal = similarity.diagonal(0)
        similarity = similarity * (1 - torch.eye(n, device=x.device))
        value, column = similarity.max(1)
        nearest = torch.zeros_like(similarity)
        nearest[torch.arange(n, device=x.device), column] = value
        nearest = nearest + torch.diag_embed((nearest.sum(0) != 0).float() * diagonal)
        hidden = i_shared_info.t().mm(nearest).t()
        hidden = hidden[hidden.sum(1) != 0]
        i_shared_info = self.fc_is(self.softmax_t2s(cos_similarity(i_shared_info, hidden)).mm(hidden))
        i_shared_back = self.fc_is_back(i_shared_info)
        output_is = self.leaky_relu(self.fc_is_fore(i_shared_info))

        # Individual information: what neither shares.
        output_indi = self.leaky_relu(self.fc_indi(x_hidden - e_shared_back - i_shared_back))
        return self.fc_out(output_es + output_is + output_indi).squeeze(-1)


QLIB_FILES = {  # Qlib's kwargs that name its .npy files, and what qpipe reads instead
    "stock2concept": "the stock-to-concept matrix is built from raw/concepts (the source's sectors and concepts, or "
                     "the file QPIPE_CONCEPTS names: the README makes one from this .npy and stock_index's)",
    "stock_index": "the stocks' rows of that matrix come from raw/concepts, not from Qlib's .npy file",
}


def from_qlib(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The concept matrix comes from raw/concepts: Qlib's .npy paths are not read."""
    return {k: v for k, v in kwargs.items() if k not in QLIB_FILES}


SPEC = ModelSpec(
    name="hist",
    net=HISTModel,
    sampler="daily",
    qlib_classes=("HIST",),
    qlib_networks=("qlib.contrib.model.pytorch_hist.HISTModel",),
    presets={
        "alpha360": Preset(None, {
            "d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200, "lr": 1e-4,
            "early_stop": 20, "metric": "ic", "loss": "mse", "base_model": "LSTM",
        }),
    },
    class_defaults={"n_epochs": 200, "lr": 0.001, "early_stop": 20, "metric": "ic", "loss": "mse", "optimizer": "adam"},
    from_qlib=from_qlib,
    qlib_not_read=QLIB_FILES,
    reads_concepts=True,
)
