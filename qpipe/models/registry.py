"""Every architecture qpipe trains: its own (a file in qpipe/models/ defining SPEC + its name here) and those other
packages register under the entry point group ``qpipe.models`` (``name = "package.module:SPEC"``).

Model files and plugins are imported on first use, so loading the Dagster code location does not import torch.
"""

import importlib
import re
from importlib.metadata import EntryPoint, entry_points

from qpipe.models.spec import ModelSpec

BUILTIN = ("mlp", "lstm", "gru", "alstm", "transformer", "localformer", "gats", "hist", "sfm", "tabnet")
ENTRY_POINT_GROUP = "qpipe.models"
PLUGIN_NAME = re.compile(r"[a-z][a-z0-9]*\Z")  # a name asset keys and run config can carry (models/<name>_checkpoint)

# Seconds of training per 10,000 samples with Qlib's Alpha360 benchmark settings on one CPU thread, as
# `python -m qpipe.bench costs` measured them (2-core AMD EPYC, 2026-12-01). Only the order matters:
# a run that trains several models trains the cheapest first.
BUILTIN_COST = {"mlp": 0.9, "tabnet": 1.0, "gats": 2.3, "hist": 2.4, "gru": 3.0, "lstm": 3.4, "alstm": 4.3,
                "sfm": 56.5, "transformer": 73.9, "localformer": 78.5}
UNMEASURED_COST = 10.0  # a plugin's, or a new file's not yet measured: after the RNNs, before the attention models


DEFAULT_FEATURE_SET = "alpha360"  # what an architecture's own checkpoint asset trains on unless its run config says
# The built-in architectures with a Qlib setting on Alpha158 (the files' presets say so too: test_models.py), whose
# variants QPIPE_MODELS=all_alpha158 names; a user's feature set takes that setting (QPIPE_MODELS=all_<set>)
ON_ALPHA158 = ("mlp", "lstm", "gru", "alstm", "transformer", "localformer", "gats", "tabnet")


class UnknownModelError(LookupError):
    pass


def model_parts(name: str) -> tuple[str, str | None]:
    """A model's architecture, and the feature set its name fixes: ``lstm`` trains on its run config's set (Alpha360
    by default), the variant ``lstm_alpha158`` on Alpha158 alone; each has assets of its own, so both rows of Qlib's
    table live side by side. (An architecture's name has no underscore: ``PLUGIN_NAME``.)"""
    arch, _, feature_set = name.partition("_")
    return arch, feature_set or None


def model_name(arch: str, feature_set: str) -> str:
    """The model ``arch`` on ``feature_set`` is: the architecture on Alpha360, else its variant (``lstm_alpha158``)."""
    return arch if feature_set == DEFAULT_FEATURE_SET else f"{arch}_{feature_set}"


def _where(point: EntryPoint) -> str:
    return f"entry point {point.name} = {point.value} (group {ENTRY_POINT_GROUP}" + (
        f", distribution {point.dist.name})" if point.dist else ")")


def _plugins() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        where = _where(point)
        if not PLUGIN_NAME.match(point.name):
            raise UnknownModelError(f"{where}: a model name is lower-case letters and digits, starting with a letter")
        if point.name in BUILTIN or point.name in found:
            raise UnknownModelError(f"{where}: the name {point.name!r} is taken by another architecture")
        found[point.name] = point
    return found


PLUGINS = _plugins()
ARCHITECTURES = BUILTIN + tuple(sorted(PLUGINS))


def training_costs(architectures: tuple[str, ...]) -> dict[str, float]:
    """Each architecture's training cost: a model file not yet in BUILTIN_COST and a plugin take UNMEASURED_COST."""
    return {name: BUILTIN_COST.get(name, UNMEASURED_COST) for name in architectures}


TRAINING_COST = training_costs(ARCHITECTURES)


def get_spec(name: str) -> ModelSpec:
    name = name.lower()
    if name in BUILTIN:
        return importlib.import_module(f"qpipe.models.{name}").SPEC
    if name not in PLUGINS:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(ARCHITECTURES))}")
    point = PLUGINS[name]
    try:
        spec = point.load()
    except Exception as error:  # the plugin's own import: named, not a bare traceback of its module
        raise UnknownModelError(f"{_where(point)} could not be imported: {type(error).__name__}: {error}") from error
    if not isinstance(spec, ModelSpec) or spec.name != name:
        raise UnknownModelError(f"{_where(point)} must name a qpipe.models.spec.ModelSpec whose name is {name!r}, "
                                f"not {spec!r:.80}")
    return spec


def _loadable_specs() -> tuple[list[ModelSpec], list[str]]:
    """Every architecture's spec, and why each plugin that does not import is left out (found in review: one broken
    plugin stopped every workflow, Qlib's own LSTM's too, with its module's bare traceback)."""
    specs, broken = [], []
    for name in ARCHITECTURES:
        try:
            specs.append(get_spec(name))
        except UnknownModelError as error:
            broken.append(str(error))
    return specs, broken


def _not_found(message: str, broken: list[str]) -> UnknownModelError:
    return UnknownModelError(message + "".join(f"; left out: {why}" for why in broken))


def spec_for_qlib_class(qlib_class: str) -> ModelSpec:
    """The architecture a Qlib model class (task.model.class) stands for."""
    specs, broken = _loadable_specs()
    for spec in specs:
        if qlib_class in spec.qlib_classes:
            return spec
    known = sorted(c for spec in specs for c in spec.qlib_classes)
    raise _not_found(f"Qlib model class {qlib_class!r} has no qpipe architecture; supported: {', '.join(known)}", broken)


def spec_for_network(uri: str) -> ModelSpec:
    """The architecture whose network is ``uri`` (Qlib's ``pt_model_uri``: ``package.module.Class``)."""
    specs, broken = _loadable_specs()
    for spec in specs:
        if uri in (f"{spec.net.__module__}.{spec.net.__qualname__}", *spec.qlib_networks):
            return spec
    raise _not_found(f"pt_model_uri = {uri!r} is the network of no qpipe architecture: register it (a ModelSpec under "
                     f"the entry point group {ENTRY_POINT_GROUP}, README: Write your own model)", broken)
