"""Re-create the model goldens in qlib_models/: Qlib's own networks, their weights, inputs and outputs.

Never imported by tests (pyqlib is not a qpipe dependency). From the repository root, with pyqlib
in a scratch venv (see README.md):

    /work/scratch/qlibvenv/bin/python qpipe_tests/golden/make_model_golden.py

For each architecture, a seeded Qlib network (small sizes) scores a seeded batch in eval mode. The
weights, the batch (Alpha360-layout rows, and HIST's concept rows) and
Qlib's scores go to qlib_models/<arch>.npz (plain arrays, no pickle); models.json holds the
constructor arguments, which are qpipe's hyper-parameter names too.
"""

import json
from pathlib import Path

import numpy as np
import torch
from qlib.contrib.model.pytorch_alstm import ALSTMModel
from qlib.contrib.model.pytorch_gats import GATModel
from qlib.contrib.model.pytorch_gru import GRUModel
from qlib.contrib.model.pytorch_hist import HISTModel
from qlib.contrib.model.pytorch_localformer import Transformer as Localformer
from qlib.contrib.model.pytorch_lstm import LSTMModel
from qlib.contrib.model.pytorch_nn import Net
from qlib.contrib.model.pytorch_sfm import SFM_Model
from qlib.contrib.model.pytorch_tabnet import FinetuneModel, TabNet
from qlib.contrib.model.pytorch_transformer import Transformer

OUT = Path(__file__).resolve().parent / "qlib_models"
N, T, F = 12, 60, 6
MODELS = {  # qpipe architecture -> (Qlib network, constructor arguments)
    "mlp": (Net, {"input_dim": F * T, "layers": [16]}),
    "lstm": (LSTMModel, {"d_feat": F, "hidden_size": 8, "num_layers": 2}),
    "gru": (GRUModel, {"d_feat": F, "hidden_size": 8, "num_layers": 2}),
    "alstm": (ALSTMModel, {"d_feat": F, "hidden_size": 8, "num_layers": 2}),
    "transformer": (Transformer, {"d_feat": F, "d_model": 8, "nhead": 2, "num_layers": 2, "dropout": 0.0}),
    "localformer": (Localformer, {"d_feat": F, "d_model": 8, "nhead": 2, "num_layers": 2, "dropout": 0.0}),
    "gats": (GATModel, {"d_feat": F, "hidden_size": 8, "num_layers": 2, "base_model": "LSTM"}),
    "hist": (HISTModel, {"d_feat": F, "hidden_size": 8, "num_layers": 2, "base_model": "LSTM"}),
    "sfm": (SFM_Model, {"d_feat": F, "hidden_size": 8, "output_dim": 4, "freq_dim": 5}),
    "tabnet": (None, {"d_feat": F * T, "out_dim": 8, "n_d": 8, "n_a": 8, "n_shared": 2, "n_ind": 2, "n_steps": 3,
                      "relax": 1.3, "vbs": 2048}),
}


def tabnet(d_feat, out_dim, n_d, n_a, n_shared, n_ind, n_steps, relax, vbs):
    """TabnetModel's fine-tuned network: FinetuneModel(out_dim -> 1) over the TabNet encoder."""
    encoder = TabNet(inp_dim=d_feat, out_dim=out_dim, n_d=n_d, n_a=n_a, n_shared=n_shared, n_ind=n_ind,
                     n_steps=n_steps, relax=relax, vbs=vbs)
    return FinetuneModel(out_dim, 1, encoder)


def main() -> None:
    torch.get_device = lambda x: "cpu"  # Qlib's HIST calls torch.device(torch.get_device(x)): -1 on the CPU
    OUT.mkdir(exist_ok=True)
    for seed, (arch, (network, kwargs)) in enumerate(MODELS.items()):
        torch.manual_seed(seed)
        net = (network or tabnet)(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}).eval()
        x = torch.randn(N, T, F)
        concepts = (torch.rand(N, 5) < 0.3).float()
        flat = x.permute(0, 2, 1).reshape(N, F * T)  # Qlib's Alpha360 row layout: field blocks of lags
        with torch.no_grad():
            extra = {"hist": (concepts,), "tabnet": (torch.ones_like(flat),)}.get(arch, ())  # TabNet: all-ones priors
            scores = net(flat, *extra)
        arrays = {f"state.{k}": v.numpy() for k, v in net.state_dict().items()}
        np.savez_compressed(OUT / f"{arch}.npz", flat=flat.numpy(), concepts=concepts.numpy(),
                            scores=scores.reshape(-1).numpy(), **arrays)
    (OUT / "models.json").write_text(json.dumps({arch: kwargs for arch, (_, kwargs) in MODELS.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
