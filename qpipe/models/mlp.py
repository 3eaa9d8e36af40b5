"""MLP: Qlib's DNNModelPytorch network (qlib/contrib/model/pytorch_nn.py::Net).

Qlib trains it step-wise (a batch drawn with replacement each step, validation every
``eval_steps`` steps, early stopping after ``early_stop_rounds`` validations without a lower
valid loss, ReduceLROnPlateau on the valid loss). qpipe runs the same schedule in the shared
epoch loop: one "epoch" is ``eval_steps`` batches (``steps_per_epoch``), so
``n_epochs = ceil(max_steps / eval_steps)`` and ``early_stop = early_stop_rounds``; batches are
drawn without replacement from successive shuffles instead of with replacement, and NaN labels
are masked as in every other model (Qlib's DNN loss has no mask). Qlib's Net hard-codes its two
dropout layers at 0.05; here that is the default of a ``dropout`` argument (0 makes training
deterministic across data-parallel ranks, qpipe.training.distributed).
"""

import math
from typing import Any, Literal

import torch
from torch import nn

from qpipe.models.spec import ModelSpec, Preset


class Net(nn.Module):
    """Dropout -> [Linear -> BatchNorm1d -> LeakyReLU(0.1)] per hidden layer -> Dropout -> Linear."""

    def __init__(self, input_dim: int, layers: tuple[int, ...] = (256,), act: Literal["LeakyReLU", "SiLU"] = "LeakyReLU",
                 dropout: float = 0.05):
        super().__init__()
        sizes = [input_dim, *layers]
        dnn_layers: list[nn.Module] = [nn.Dropout(dropout)]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            activation = nn.LeakyReLU(negative_slope=0.1) if act == "LeakyReLU" else nn.SiLU()
            dnn_layers.append(nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), activation))
        dnn_layers += [nn.Dropout(dropout), nn.Linear(sizes[-1], 1)]
        self.dnn_layers = nn.ModuleList(dnn_layers)  # Qlib's state-dict keys
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.dnn_layers:
            x = layer(x)
        return x.squeeze(-1)


QLIB_EVAL_STEPS = 20  # DNNModelPytorch default


def from_qlib(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map DNNModelPytorch's step-based kwargs onto the epoch loop (see the module docstring)."""
    out = dict(kwargs)
    eval_steps = out.pop("eval_steps", None)
    if eval_steps is not None:
        out["steps_per_epoch"] = _positive_int("eval_steps", eval_steps)
    if "max_steps" in out:
        out["n_epochs"] = math.ceil(_positive_int("max_steps", out.pop("max_steps")) / (eval_steps or QLIB_EVAL_STEPS))
    if "early_stop_rounds" in out:
        out["early_stop"] = out.pop("early_stop_rounds")
    if "pt_model_kwargs" in out:  # replaces the whole dict in Qlib, so unset keys take Net's defaults
        net_kwargs = out.pop("pt_model_kwargs")
        if not isinstance(net_kwargs, dict):
            raise ValueError(f"pt_model_kwargs must be a mapping, got {net_kwargs!r}")
        out.update(net_kwargs)
    if out.get("scheduler") == "default":  # Qlib's default = ReduceLROnPlateau on the valid loss
        out["scheduler"] = "plateau"
    return out


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


SPEC = ModelSpec(
    name="mlp",
    net=Net,
    sampler="flat",
    qlib_classes=("DNNModelPytorch",),
    qlib_networks=("qlib.contrib.model.pytorch_nn.Net",),
    class_defaults={
        "lr": 0.001, "max_steps": 300, "batch_size": 2000, "early_stop_rounds": 50,
        "eval_steps": QLIB_EVAL_STEPS, "optimizer": "gd", "loss": "mse", "scheduler": "default",
        "pt_model_kwargs": {"input_dim": 360, "layers": (256,)},
    },
    presets={
        "alpha360": Preset(None, {
            "loss": "mse", "lr": 0.002, "optimizer": "adam", "max_steps": 8000, "batch_size": 4096,
            "pt_model_kwargs": {"input_dim": 360},
        }),
        # Qlib's MLP-158 drops VWAP0 (157 columns) and does not normalize the features.
        "alpha158": Preset(None, {
            "loss": "mse", "lr": 0.002, "optimizer": "adam", "max_steps": 8000, "batch_size": 8192,
            "weight_decay": 0.0002, "pt_model_kwargs": {"input_dim": 157},
        }, handler={
            "infer_processors": [{"class": "DropCol", "kwargs": {"col_list": ["VWAP0"]}},
                                 {"class": "CSZFillna", "kwargs": {"fields_group": "feature"}}],
            "learn_processors": [{"class": "DropCol", "kwargs": {"col_list": ["VWAP0"]}},
                                 {"class": "DropnaProcessor", "kwargs": {"fields_group": "feature"}},
                                 "DropnaLabel", {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}],
            "process_type": "independent",
        }),
    },
    from_qlib=from_qlib,
    # from_qlib sets n_epochs from max_steps (DNNModelPytorch's class default 300 when the YAML has none)
    qlib_not_read={"n_epochs": "Qlib's DNNModelPytorch has no n_epochs: max_steps decides (n_epochs = "
                               "ceil(max_steps / eval_steps))"},
    qlib_changed={"batch_size": lambda size: (
        f"batches of {size} drawn without replacement from successive shuffles of the train window (Qlib's "
        "DNNModelPytorch draws each batch with replacement: np.random.choice(train_num, batch_size))")},
)
