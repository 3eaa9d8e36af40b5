"""TabNet: Qlib's TabnetModel (qlib/contrib/model/pytorch_tabnet.py), Arik & Pfister 2019,
"TabNet: Attentive Interpretable Tabular Learning".

Sequential attention over flat features: each decision step's attentive transformer picks a
sparse feature mask (sparsemax of a ghost-batch-normalized projection times the priors), a
feature transformer (shared, then step-specific GLU blocks) processes the masked input; the
ReLU'd first n_d outputs of every step are summed into the encoding, and a linear head scores it.
Self-supervised pretraining (``pretrain: true``, masked-feature reconstruction through
``TabNetDecoder``) is run by qpipe.training.pretraining before the supervised loop.

Deliberate differences from Qlib: ``n_d, n_a, n_shared, n_ind, n_steps`` reach the encoder (Qlib
passes only inp_dim/out_dim/vbs/relax, so its class defaults 64/64/2/2/5 always apply: the same
values as the benchmark's); the head is trained (Qlib builds the fine-tuning optimizer before it
adds the head, so the head keeps its random weights); the attention priors stay all ones during
supervised training and prediction, as in Qlib.
"""

import numpy as np
import torch
from torch import nn
from torch.autograd import Function

from qpipe.models.spec import ModelSpec, Preset


class Sparsemax(Function):
    """Sparsemax over the last dimension (Martins & Astudillo 2016): a projection onto the simplex."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x - x.max(dim=-1, keepdim=True).values
        ordered = torch.sort(x, descending=True, dim=-1).values
        cumulative = ordered.cumsum(-1) - 1
        rho = torch.arange(1, x.size(-1) + 1, device=x.device, dtype=x.dtype)
        support = (rho * ordered > cumulative).sum(dim=-1, keepdim=True)
        tau = cumulative.gather(-1, support - 1) / support.to(x.dtype)
        output = torch.clamp(x - tau, min=0)
        ctx.save_for_backward(support, output)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        support, output = ctx.saved_tensors
        grad = torch.where(output == 0, 0.0, grad_output)
        v_hat = grad.sum(dim=-1, keepdim=True) / support.to(output.dtype)
        return torch.where(output != 0, grad - v_hat, grad)


class GBN(nn.Module):
    """Ghost batch normalization: BatchNorm1d over chunks of ``vbs`` rows."""

    def __init__(self, inp: int, vbs: int = 1024, momentum: float = 0.01):
        super().__init__()
        self.bn = nn.BatchNorm1d(inp, momentum=momentum)
        self.vbs = vbs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) <= self.vbs:
            return self.bn(x)
        return torch.cat([self.bn(chunk) for chunk in torch.chunk(x, x.size(0) // self.vbs, 0)], 0)


class GLU(nn.Module):
    def __init__(self, inp_dim: int, out_dim: int, fc: nn.Linear | None = None, vbs: int = 1024):
        super().__init__()
        self.fc = fc if fc is not None else nn.Linear(inp_dim, out_dim * 2)
        self.bn = GBN(out_dim * 2, vbs=vbs)
        self.od = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.fc(x))
        return x[:, : self.od] * torch.sigmoid(x[:, self.od :])


class FeatureTransformer(nn.Module):
    """GLU blocks, the first ones' linear layers shared across steps; residuals scaled by sqrt(0.5)."""

    def __init__(self, inp_dim: int, out_dim: int, shared: nn.ModuleList | None, n_ind: int, vbs: int):
        super().__init__()
        self.shared = None
        if shared:
            self.shared = nn.ModuleList([GLU(inp_dim, out_dim, shared[0], vbs=vbs)])
            self.shared.extend(GLU(out_dim, out_dim, fc, vbs=vbs) for fc in shared[1:])
        first = not shared
        self.independ = nn.ModuleList([GLU(inp_dim, out_dim, vbs=vbs)] if first else [])
        self.independ.extend(GLU(out_dim, out_dim, vbs=vbs) for _ in range(int(first), n_ind))
        self.scale = float(np.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            x = self.shared[0](x)
            for glu in self.shared[1:]:
                x = (x + glu(x)) * self.scale
        for glu in self.independ:
            x = (x + glu(x)) * self.scale
        return x


class AttentionTransformer(nn.Module):
    def __init__(self, d_a: int, inp_dim: int, relax: float, vbs: int = 1024):
        super().__init__()
        self.fc = nn.Linear(d_a, inp_dim)
        self.bn = GBN(inp_dim, vbs=vbs)
        self.r = relax  # kept for Qlib's constructor; Qlib computes the prior update and discards it

    def forward(self, a: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        return Sparsemax.apply(self.bn(self.fc(a)) * priors)


class DecisionStep(nn.Module):
    def __init__(self, inp_dim: int, n_d: int, n_a: int, shared: nn.ModuleList | None, n_ind: int, relax: float, vbs: int):
        super().__init__()
        self.atten_tran = AttentionTransformer(n_a, inp_dim, relax, vbs)
        self.fea_tran = FeatureTransformer(inp_dim, n_d + n_a, shared, n_ind, vbs)

    def forward(self, x: torch.Tensor, a: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        return self.fea_tran(x * self.atten_tran(a, priors))


def _shared_linears(inp_dim: int, width: int, n_shared: int) -> nn.ModuleList | None:
    if n_shared <= 0:
        return None
    return nn.ModuleList([nn.Linear(inp_dim, 2 * width), *(nn.Linear(width, 2 * width) for _ in range(n_shared - 1))])


class TabNet(nn.Module):
    """The encoder: [B, inp_dim] features and attention priors -> [B, out_dim] encoding."""

    def __init__(self, inp_dim: int, out_dim: int, n_d: int = 64, n_a: int = 64, n_shared: int = 2, n_ind: int = 2,
                 n_steps: int = 5, relax: float = 1.2, vbs: int = 1024):
        super().__init__()
        self.shared = _shared_linears(inp_dim, n_d + n_a, n_shared)
        self.first_step = FeatureTransformer(inp_dim, n_d + n_a, self.shared, n_ind, vbs)
        self.steps = nn.ModuleList(DecisionStep(inp_dim, n_d, n_a, self.shared, n_ind, relax, vbs) for _ in range(n_steps - 1))
        self.fc = nn.Linear(n_d, out_dim)
        self.bn = nn.BatchNorm1d(inp_dim, momentum=0.01)
        self.n_d = n_d

    def forward(self, x: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)
        a = self.first_step(x)[:, self.n_d :]
        out = torch.zeros(x.size(0), self.n_d, device=x.device, dtype=x.dtype)
        for step in self.steps:
            x_te = step(x, a, priors)
            out = out + torch.relu(x_te[:, : self.n_d])
            a = x_te[:, self.n_d :]
        return self.fc(out)


class TabNetDecoder(nn.Module):
    """Pretraining only: the encoding -> a reconstruction of the features, summed over n_steps steps."""

    def __init__(self, inp_dim: int, out_dim: int, n_shared: int, n_ind: int, vbs: int, n_steps: int):
        super().__init__()
        self.out_dim = out_dim
        self.shared = _shared_linears(inp_dim, out_dim, n_shared)
        self.steps = nn.ModuleList(nn.ModuleDict({"fea_tran": FeatureTransformer(inp_dim, out_dim, self.shared, n_ind, vbs),
                                                  "fc": nn.Linear(out_dim, out_dim)}) for _ in range(n_steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(step["fc"](step["fea_tran"](x)) for step in self.steps)


class TabnetModel(nn.Module):
    """Qlib's FinetuneModel: the encoder (``model``, Qlib's key) and a linear head (``fc``)."""

    def __init__(self, d_feat: int = 158, out_dim: int = 64, final_out_dim: int = 1, n_d: int = 64, n_a: int = 64,
                 n_shared: int = 2, n_ind: int = 2, n_steps: int = 5, relax: float = 1.3, vbs: int = 2048):
        super().__init__()
        self.model = TabNet(d_feat, out_dim, n_d, n_a, n_shared, n_ind, n_steps, relax, vbs)
        self.fc = nn.Linear(out_dim, final_out_dim)
        self.decoder_args = (out_dim, d_feat, n_shared, n_ind, vbs, n_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        priors = torch.ones_like(x)
        return self.fc(self.model(x, priors)).squeeze(-1)

    def make_decoder(self) -> TabNetDecoder:
        """The pretraining decoder for this encoder (not part of the checkpoint, as in Qlib)."""
        return TabNetDecoder(*self.decoder_args)


def from_qlib(kwargs: dict) -> dict:
    out = dict(kwargs)
    loss = out.pop("pretrain_loss", "custom")
    if loss != "custom":
        raise ValueError(f"pretrain_loss = {loss!r}: TabNet's pretraining loss is 'custom' (the paper's)")
    out.pop("pretrain_file", None)  # the pretrained encoder is part of the checkpoint
    return out


SPEC = ModelSpec(
    name="tabnet",
    net=TabnetModel,
    sampler="flat",
    qlib_classes=("TabnetModel",),
    presets={
        "alpha360": Preset(None, {"d_feat": 360, "pretrain": True, "seed": 993}),
        "alpha158": Preset(None, {"d_feat": 158, "pretrain": True, "seed": 993}),
    },
    class_defaults={"batch_size": 4096, "n_epochs": 100, "pretrain_n_epochs": 50, "seed": 993, "optimizer": "adam",
                    "loss": "mse", "metric": "loss", "early_stop": 20, "ps": 0.3, "lr": 0.01, "pretrain": True},
    from_qlib=from_qlib,
    unsplittable_batch=("normalizes ghost batches (BatchNorm over chunks of vbs rows, its running statistics updated "
                        "chunk after chunk), which a batch split across processes would change"),
)
