"""The hyper-parameters of one model run: Qlib benchmark presets or a Qlib workflow YAML, validated.

Keys keep Qlib's names. The network's constructor arguments (``d_feat``, ``hidden_size``, ...)
are checked against their type hints; every other key belongs to the training engine
(``TRAINING_DEFAULTS``). Every error names the offending key and value.
"""

import difflib
import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from qpipe.models.registry import get_spec, spec_for_network, spec_for_qlib_class
from qpipe.models.spec import ModelSpec, Preset

if TYPE_CHECKING:
    import torch

FEATURE_SETS = {"Alpha158": "alpha158", "Alpha360": "alpha360"}  # Qlib handler class -> qpipe feature set
LOADER_HANDLER = "DataHandlerLP"  # Qlib's handler of a QlibDataLoader's own expressions: a set of the workflow's
QLIB_TSDATASET_STEP_LEN = 30  # TSDatasetH's default step_len

TRAINING_DEFAULTS: dict[str, Any] = {
    # Qlib's NN recipe class defaults (LSTM/GRU/ALSTM).
    "n_epochs": 200,
    "lr": 0.001,
    "batch_size": 2000,
    "early_stop": 20,
    "loss": "mse",
    "optimizer": "adam",
    "metric": "loss",
    "weight_decay": 0.0,
    # qpipe additions.
    "seed": 0,  # Qlib's default is unseeded; None draws a seed and records it in the result
    "steps_per_epoch": None,  # None = one pass over the training samples
    "scheduler": None,  # None | "plateau" (ReduceLROnPlateau on the valid loss, Qlib DNN's "default")
    # Self-supervised pretraining before the supervised loop (TabNet's masked-feature reconstruction).
    "pretrain": False,
    "pretrain_n_epochs": 50,
    "ps": 0.3,  # the share of features masked out in each pretraining row
    # A qpipe checkpoint whose weights with matching names start the network (Qlib's pretrained base
    # RNN of GATs and HIST: rnn.* and fc_out.* from an LSTM or GRU).
    "model_path": None,
    # Mixed precision: None (float32) or "bf16" (forward passes under torch.autocast in bfloat16; the loss,
    # the optimizer and the stored weights stay float32). Off by default: scores then equal the float32 run's.
    "amp": None,
    # Qlib's data_parall: train one checkpoint data-parallel on K processes (torch DDP, qpipe.training.distributed):
    # an int K, or true = every visible GPU; None/false/1 = one process. Each rank takes 1/K of every batch and the
    # gradients are summed, so with dropout 0 the weights equal one process's up to float summation order.
    # Refused for whole-day batches (GATs, HIST) and TabNet's ghost BatchNorm.
    "data_parall": None,
}
# Qlib's generic trainer, whose network is named by pt_model_uri (its own trainer defaults are TRAINING_DEFAULTS).
GENERAL_PTNN = "GeneralPTNN"
GENERAL_PTNN_NETWORK = {"pt_model_uri": "qlib.contrib.model.pytorch_gru_ts.GRUModel",
                        "pt_model_kwargs": {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0}}


def _gpu_way(value: Any) -> str:
    """Qlib's ``GPU``: a device index, or a negative one for the CPU."""
    index = value if isinstance(value, int) and not isinstance(value, bool) else None
    device = "cpu" if index is not None and index < 0 else f"cuda:{index}" if index is not None else "cuda"
    return f"Qlib's device choice; qpipe's is `device: {device}` in the checkpoint config (beside params), or QPIPE_DEVICE"


# Accepted in a Qlib YAML and ignored (qpipe picks the device itself, and batches are gathered on the device, so
# there are no DataLoader workers) -> what to write instead in a checkpoint's params, where they are refused.
QLIB_IGNORED_WAY: dict[str, Callable[[Any], str]] = {
    "GPU": _gpu_way,
    "n_jobs": lambda value: "Qlib's DataLoader workers; qpipe has none (batches are gathered on the device): remove it",
}
QLIB_IGNORED = frozenset(QLIB_IGNORED_WAY)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    model: str  # registry name
    feature_set: str  # "alpha158" | "alpha360"
    step_len: int | None  # TSDatasetH window length; None = DatasetH (Alpha360 rows are reshaped instead)
    params: Mapping[str, Any]  # every hyper-parameter, defaults filled in

    def to_json(self) -> dict[str, Any]:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        return {"model": self.model, "feature_set": self.feature_set, "step_len": self.step_len, "params": params}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "config") -> "ModelConfig":
        return validated_config(get_spec(data["model"]), data["feature_set"], data["step_len"], data["params"], source)


def model_config(model: str, feature_set: str, **overrides: Any) -> ModelConfig:
    """Qlib's benchmark setting of ``model`` on ``feature_set``, with ``overrides`` (``step_len`` included)."""
    spec = get_spec(model)
    feature_set = FEATURE_SETS.get(feature_set, feature_set)  # Qlib's handler name (Alpha158) too
    preset = spec.presets.get(feature_set) or _user_set_preset(spec, feature_set)
    if preset is None:
        raise ConfigError(f"model {spec.name!r} has no preset for feature set {feature_set!r}; valid: "
                          f"{', '.join([*spec.presets, *(_user_sets() if 'alpha158' in spec.presets else {})])}")
    step_len = overrides.pop("step_len", preset.step_len)
    kept = spec.from_qlib(overrides)
    not_read = sorted(k for k in overrides if k in spec.qlib_not_read and k not in kept)
    if not_read:  # a Qlib YAML's are reported by qrun; given here, they would be dropped in silence
        key = not_read[0]
        raise ConfigError(f"{spec.name}/{feature_set}: hyper-parameter {key} = {overrides[key]!r} is not read: "
                          f"{spec.qlib_not_read[key]}; remove it")
    params = {**spec.from_qlib({**spec.qlib_class_defaults(step_len), **preset.params}), **kept}
    return validated_config(spec, feature_set, step_len, params, source=f"{spec.name}/{feature_set}")


def _loader_set(loader: Any, path: Path) -> str:
    """The feature set of a DataHandlerLP's QlibDataLoader, registered in this process under the workflow's name."""
    from qpipe.features import store
    from qpipe.features.custom import FeatureSetError, loader_expressions, workflow_set_name

    key = "task.dataset.kwargs.handler.kwargs.data_loader"
    if not isinstance(loader, dict) or loader.get("class") != "QlibDataLoader":
        raise ConfigError(f"{path}: {key} = {str(loader)[:80]}: qpipe reads a QlibDataLoader's expressions (class: "
                          "QlibDataLoader, kwargs: {config: {feature: [[expressions], [names]]}})")
    try:
        expressions = loader_expressions(f"{path}: {key}.kwargs.config", (loader.get("kwargs") or {}).get("config"))
    except FeatureSetError as error:
        raise ConfigError(str(error)) from None
    return store.register(workflow_set_name(path), expressions).name


def feature_set_names() -> list[str]:
    """The feature sets this process knows: Alpha158, Alpha360 and those of QPIPE_FEATURE_SETS."""
    return [*FEATURE_SETS.values(), *_user_sets()]


def _user_sets() -> dict[str, int]:
    """The user's own feature sets (QPIPE_FEATURE_SETS) and their numbers of columns."""
    from qpipe.features.store import FEATURE_SETS as STORED

    return {name: len(fs.columns) for name, fs in STORED.items() if fs.expressions is not None}


def _user_set_preset(spec: ModelSpec, feature_set: str) -> Preset | None:
    """A model's setting on a user's feature set: its Alpha158 preset (TSDatasetH windows for a sequence model, rows
    for the others), the network's width (``input_dim``, else ``d_feat``) the set's columns, the benchmark's
    processors (not the preset's own chains, which name Alpha158's columns)."""
    columns = _user_sets().get(feature_set)
    base = spec.presets.get("alpha158")
    if columns is None or base is None:
        return None
    width = "input_dim" if "input_dim" in spec.net_parameters() else "d_feat"
    params = dict(base.params)
    if "pt_model_kwargs" in params:  # the network's own, in Qlib's form (the MLP's)
        params["pt_model_kwargs"] = {**params["pt_model_kwargs"], width: columns}
    else:
        params[width] = columns
    return Preset(base.step_len, params)


def read_qlib_yaml(path: Path) -> dict[str, Any]:
    """A Qlib workflow YAML as Qlib reads it (YAML 1.2 floats such as ``1e-4``); an error names the file."""
    try:
        with path.open() as stream:  # (a syntax error names the file, not "<unicode string>")
            document = yaml.load(stream, Loader=_Yaml12Loader)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the workflow YAML: {error}") from error
    except ValueError as error:  # PyYAML builds a date of any YYYY-MM-DD value: 2016-13-31 fails there
        raise ConfigError(f"{path}: cannot read the workflow YAML: a value written as a date is not one ({error})") \
            from error
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a Qlib workflow (a mapping with qlib_init and task), but a {type(document).__name__}")
    return document


def config_from_qlib_yaml(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """Read task.model and task.dataset of a Qlib workflow YAML (as Qlib would: class defaults + kwargs), with
    ``overrides`` (a checkpoint's params) over its kwargs."""
    return config_from_qlib_document(read_qlib_yaml(Path(path)), Path(path), overrides)


def config_from_qlib_document(document: dict[str, Any], path: Path,
                              overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """``config_from_qlib_yaml`` of a document already read (``path`` names it in errors)."""

    def lookup(dotted: str, default: Any = inspect.Parameter.empty) -> Any:
        node = document
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                if default is not inspect.Parameter.empty:
                    return default
                raise ConfigError(f"{path}: missing {dotted}")
            node = node[key]
        return node

    model_class = lookup("task.model.class")
    handler = lookup("task.dataset.kwargs.handler.class")
    if handler == LOADER_HANDLER:
        feature_set = _loader_set(lookup("task.dataset.kwargs.handler.kwargs.data_loader", None), path)
    elif handler in FEATURE_SETS:
        feature_set = FEATURE_SETS[handler]
    else:
        raise ConfigError(f"{path}: task.dataset.kwargs.handler.class = {handler!r}; supported: "
                          f"{', '.join([*FEATURE_SETS, LOADER_HANDLER])} (DataHandlerLP with a QlibDataLoader of "
                          "your own expressions)")
    dataset = lookup("task.dataset.class")
    if dataset == "DatasetH":
        step_len = None
    elif dataset == "TSDatasetH":
        step_len = lookup("task.dataset.kwargs.step_len", QLIB_TSDATASET_STEP_LEN)
    else:
        raise ConfigError(f"{path}: task.dataset.class = {dataset!r}; supported: DatasetH, TSDatasetH")
    kwargs = lookup("task.model.kwargs", None) or {}
    kwargs = {k: v for k, v in kwargs.items() if k not in QLIB_IGNORED}
    try:
        if model_class == GENERAL_PTNN or (model_class == "DNNModelPytorch" and "pt_model_uri" in kwargs):
            spec, params = _network_by_uri(model_class, kwargs)
        else:
            spec = spec_for_qlib_class(model_class)
            params = spec.from_qlib({**spec.qlib_class_defaults(step_len), **kwargs})
    except (LookupError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None
    # (before validation: a checkpoint's model_path replaces the YAML's pickled one, found in review: always refused)
    params = {**params, **spec.from_qlib(dict(overrides or {}))}
    if feature_set not in spec.presets and _user_set_preset(spec, feature_set) is None:  # (a checkpoint's settings
        raise ConfigError(                                                          # start from its set's preset)
            f"{path}: task.dataset.kwargs.handler.class = {handler!r}: model {spec.name!r} has no preset for feature "
            f"set {feature_set!r} (its ModelSpec has presets for {', '.join(spec.presets) or 'none'}; a spec needs a "
            "preset per feature set it accepts" + ("; a loader's expressions take its alpha158 preset)"
                                                   if handler == LOADER_HANDLER else ")"))
    try:
        return validated_config(spec, feature_set, step_len, params, source=str(path))
    except ConfigError as error:
        if model_class == GENERAL_PTNN and "pt_model_uri" not in kwargs:  # the model's name came from nowhere visible
            raise ConfigError(f"{error} (GeneralPTNN without pt_model_uri trains its default network, "
                              f"{GENERAL_PTNN_NETWORK['pt_model_uri']}: name pt_model_uri for another)") from None
        raise


def _network_by_uri(model_class: str, kwargs: dict[str, Any]) -> tuple[ModelSpec, dict[str, Any]]:
    """Qlib's generic trainers, whose network is ``pt_model_uri`` built with ``pt_model_kwargs``: GeneralPTNN, and
    DNNModelPytorch (its step-based kwargs read as the MLP reads them). The architecture is the one whose network
    that is: one of qpipe's (Qlib's own module paths) or one a package registers (README: Write your own model)."""
    if model_class == GENERAL_PTNN:
        given, trainer = {**GENERAL_PTNN_NETWORK, **kwargs}, dict
    else:
        mlp = get_spec("mlp")
        given, trainer = {**mlp.class_defaults, **kwargs}, mlp.from_qlib
    spec = spec_for_network(str(given.pop("pt_model_uri")))
    network = given.pop("pt_model_kwargs", None) or {}
    if not isinstance(network, Mapping):
        raise ValueError(f"task.model.kwargs.pt_model_kwargs = {network!r}: expected a mapping of the network's arguments")
    return spec, {**trainer(given), **network}


def validated_config(spec: ModelSpec, feature_set: str, step_len: Any, given: Mapping[str, Any], source: str) -> ModelConfig:
    net_parameters = spec.net_parameters()
    unknown = sorted(set(given) - set(TRAINING_DEFAULTS) - set(net_parameters))
    ignored = sorted(set(unknown) & QLIB_IGNORED)  # Qlib's, and qpipe does it another way
    if ignored:
        key = ignored[0]
        raise ConfigError(f"{source}: hyper-parameter {key} = {given[key]!r}: {QLIB_IGNORED_WAY[key](given[key])}")
    if unknown:
        names = sorted({*TRAINING_DEFAULTS, *net_parameters})
        close = difflib.get_close_matches(unknown[0], names, n=1)
        raise ConfigError(f"{source}: unknown hyper-parameter {unknown[0]!r} = {given[unknown[0]]!r} for model "
                          f"{spec.name!r}" + (f" (did you mean {close[0]}?)" if close else "")
                          + f"; valid: {', '.join(names)}")
    if feature_set not in feature_set_names():
        raise ConfigError(f"{source}: unknown feature set {feature_set!r}; valid: {', '.join(feature_set_names())}")
    if step_len is not None:
        step_len = _check(source, "step_len", step_len, _positive_int)
        if spec.sampler == "flat":
            raise ConfigError(f"{source}: step_len = {step_len} (TSDatasetH) but model {spec.name!r} takes flat rows (DatasetH)")

    params: dict[str, Any] = {}
    for key, default in TRAINING_DEFAULTS.items():
        params[key] = _check(source, key, given.get(key, default), _ENGINE_CHECKS[key])
    ranks = params["data_parall"]
    refusal = _data_parallel_refusal(spec) if ranks is True or (ranks is not None and ranks > 1) else ""
    if refusal:
        raise ConfigError(f"{source}: hyper-parameter data_parall = {params['data_parall']!r}: model {spec.name!r} {refusal}; "
                          "train it on one process (data_parall: 1)")
    if params["pretrain"] and not hasattr(spec.net, "make_decoder"):
        raise ConfigError(f"{source}: hyper-parameter pretrain = True: model {spec.name!r} has no self-supervised "
                          "pretraining (TabNet has)")
    for key, parameter in net_parameters.items():
        if key not in given and parameter.default is inspect.Parameter.empty:
            raise ConfigError(f"{source}: model {spec.name!r} needs hyper-parameter {key!r}")
        value = given.get(key, parameter.default)
        params[key] = _check(source, key, value, _net_check(key, parameter))
    if params.get("nhead") and params.get("d_model", 0) % params["nhead"]:  # (torch's assertion names neither)
        raise ConfigError(f"{source}: hyper-parameters d_model = {params['d_model']} and nhead = {params['nhead']}: "
                          "d_model must be a multiple of nhead (each attention head reads d_model / nhead of it)")
    return ModelConfig(spec.name, feature_set, step_len, params)


Check = Callable[[Any], Any]  # returns the normalized value or raises ValueError saying what is wrong


def _check(source: str, key: str, value: Any, check: Check) -> Any:
    try:
        return check(value)
    except ValueError as error:
        raise ConfigError(f"{source}: hyper-parameter {key} = {value!r}: {error}") from None


def _checkpoint_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be the path of a qpipe checkpoint")
    if value.endswith((".pkl", ".pt", ".pth", ".bin")):
        raise ValueError("a pickled Qlib/PyTorch file is never loaded; point it at a qpipe checkpoint of the base "
                         "model (e.g. .qpipe/checkpoints/lstm/2024-01-31.safetensors), or remove it (null in a "
                         "checkpoint's params, over a Qlib YAML's) to start from scratch")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {type(value).__name__}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {type(value).__name__}")
    return value


def _positive_int(value: Any) -> int:
    if _integer(value) <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_int(value: Any) -> int:
    if _integer(value) < 0:
        raise ValueError("must be >= 0")
    return value


# A number in exponent form without a dot (1e-4): YAML 1.2 reads it as a float, PyYAML's YAML 1.1 (Dagster's run
# config) as a string; Qlib's YAMLs write lr: 1e-4.
EXPONENT_FORM = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> float:
    if isinstance(value, str) and EXPONENT_FORM.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {type(value).__name__}")
    return float(value)


def _positive_number(value: Any) -> float:
    if _number(value) <= 0:
        raise ValueError("must be > 0")
    return float(value)


def _non_negative_number(value: Any) -> float:
    if _number(value) < 0:
        raise ValueError("must be >= 0")
    return float(value)


def _probability(value: Any) -> float:
    if not 0 <= _number(value) < 1:
        raise ValueError("must be in [0, 1)")
    return float(value)


def _choice(*choices: str, aliases: Mapping[str, str] | None = None, case_sensitive: bool = True) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be one of {', '.join(choices)}")
        name = value if case_sensitive else value.lower()
        name = (aliases or {}).get(name, name)
        if name not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return name

    return check


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _processes(value: Any) -> int | bool | None:
    """Qlib's data_parall: a bool (true = every visible GPU; false = off, stored as None) or a number of processes."""
    if isinstance(value, bool):
        return True if value else None
    if not isinstance(value, int) or value < 1:
        raise ValueError("must be a number of processes >= 1, or true for every visible GPU")
    return value


def _data_parallel_refusal(spec: ModelSpec) -> str:
    """Why a batch of ``spec``'s model cannot be split across data-parallel ranks ("" = it can)."""
    if spec.sampler == "daily":
        return ("trains on one whole day per batch and attends across that day's stocks, so a batch cannot be split "
                "across processes without changing the model")
    return spec.unsplittable_batch


def _positive_ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("must be a non-empty list of integers")
    return tuple(_positive_int(v) for v in value)


_ENGINE_CHECKS: dict[str, Check] = {
    "n_epochs": _positive_int,
    "lr": _positive_number,
    "batch_size": _positive_int,
    "early_stop": _positive_int,
    "loss": _choice("mse"),
    "optimizer": _choice("adam", "gd", case_sensitive=False),  # Qlib lower-cases it
    "metric": _choice("loss", "ic", aliases={"": "loss"}),  # Qlib: "" means the loss
    "weight_decay": _non_negative_number,
    "seed": _optional(_non_negative_int),
    "steps_per_epoch": _optional(_positive_int),
    "scheduler": _optional(_choice("plateau")),
    "pretrain": _boolean,
    "pretrain_n_epochs": _positive_int,
    "ps": _probability,
    "model_path": _optional(_checkpoint_path),
    "amp": _optional(_choice("bf16")),
    "data_parall": _optional(_processes),
}


def _net_check(key: str, parameter: inspect.Parameter) -> Check:
    """The check a network argument gets from its type hint, or from its default's type without one: a count or size
    is > 0 and a rate >= 0, unless the network's own default is 0 or less (found in review: ``padding: int = 0`` could
    never be configured, and bool, str and optional arguments were refused)."""
    annotation, default = parameter.annotation, parameter.default
    has_default = default is not inspect.Parameter.empty and default is not None
    if annotation is inspect.Parameter.empty and has_default:
        annotation = type(default)
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:  # X | None
        return _optional(_net_check(key, parameter.replace(annotation=next(a for a in args if a is not type(None)))))
    if typing.get_origin(annotation) is typing.Literal:
        return _choice(*args)
    if annotation is bool:
        return _boolean
    if annotation is int:
        return (_integer if has_default and default < 0 else _non_negative_int if has_default and default == 0
                else _positive_int)
    if annotation is float:
        return _probability if "dropout" in key else _number if has_default and default < 0 else _non_negative_number
    if annotation is str:
        return _string
    if typing.get_origin(annotation) is tuple:
        return _positive_ints
    raise TypeError(f"network argument {key!r} has no supported type hint: {annotation!r} (supported: int, float, bool, "
                    "str, Literal[...], tuple[int, ...], each also | None)")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float, as YAML 1.2 (and Qlib's ruamel loader) do."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def build_model(config: ModelConfig) -> "torch.nn.Module":
    """The untrained network a config describes."""
    return get_spec(config.model).build(config.params)
