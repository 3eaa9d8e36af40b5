"""What the engine needs to know about an architecture, besides its nn.Module."""

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the registry imports this module without torch
    from torch import nn

SamplerKind = Literal["flat", "sequence", "daily"]
"""How samples reach the network: "flat" rows [B, F]; "sequence" per-instrument windows
[B, T, F] in shuffled row batches; "daily" the same windows, one whole day per batch."""


@dataclass(frozen=True)
class Preset:
    """Qlib's benchmark setting for one feature set (examples/benchmarks/<Model>/*.yaml)."""

    step_len: int | None  # TSDatasetH window length; None = DatasetH
    params: Mapping[str, Any]  # the YAML's task.model.kwargs, in Qlib's names
    # The YAML's infer_processors / learn_processors / process_type where they are not the benchmark chains
    handler: Mapping[str, Any] | None = None


def _unchanged(kwargs: dict[str, Any]) -> dict[str, Any]:
    return kwargs


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: its network, how it is fed, and the Qlib names and settings it answers to.

    Hyper-parameters use Qlib's names. The network's constructor arguments are its own
    hyper-parameters (d_feat, hidden_size, ...); every other key belongs to the training engine.
    """

    name: str
    net: "type[nn.Module]"
    sampler: SamplerKind
    qlib_classes: tuple[str, ...]
    presets: Mapping[str, Preset]  # feature set -> Qlib benchmark setting
    qlib_networks: tuple[str, ...] = ()  # Qlib's module paths of the network (a YAML's pt_model_uri)
    class_defaults: Mapping[str, Any] = field(default_factory=dict)  # Qlib class defaults that differ from the engine's
    ts_class_defaults: Mapping[str, Any] = field(default_factory=dict)  # where the _ts class (TSDatasetH) differs
    from_qlib: Callable[[dict[str, Any]], dict[str, Any]] = _unchanged  # Qlib-only kwargs -> engine names
    qlib_not_read: Mapping[str, str] = field(default_factory=dict)  # Qlib kwargs from_qlib drops -> why (qpipe qrun)
    # Qlib kwargs qpipe's trainer reads otherwise than the Qlib class -> given the value (the class default where the
    # YAML has none), how it differs, "" where that value trains as Qlib's does (qpipe qrun reports it changed)
    qlib_changed: Mapping[str, Callable[[Any], str]] = field(default_factory=dict)
    reads_concepts: bool = False  # forward(x, concepts): each stock's concept-membership row as well (HIST)
    # Why the rows of a training batch cannot be split across data-parallel ranks ("" = they can: the network reads
    # each row on its own but for BatchNorm, which data-parallel training synchronizes). Whole-day batches never can.
    unsplittable_batch: str = ""

    def qlib_class_defaults(self, step_len: int | None) -> dict[str, Any]:
        """The Qlib class's defaults: the ``_ts`` class's where the dataset is TSDatasetH (step_len set)."""
        return {**self.class_defaults, **(self.ts_class_defaults if step_len is not None else {})}

    def net_parameters(self) -> dict[str, inspect.Parameter]:
        """The network constructor's arguments, whose defaults are the Qlib class defaults."""
        return dict(inspect.signature(self.net, eval_str=True).parameters)  # (``from __future__ import annotations``)

    def build(self, params: Mapping[str, Any]) -> "nn.Module":
        return self.net(**{name: params[name] for name in self.net_parameters() if name in params})
