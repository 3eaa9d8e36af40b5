"""Every architecture qpipe trains. Adding one = its file in qpipe/models/ (defining SPEC) + its name here.

Model files are imported on first use, so loading the Dagster code location does not import torch.
"""

import importlib

from qpipe.models.spec import ModelSpec

ARCHITECTURES = ("mlp", "lstm", "gru", "alstm", "transformer", "localformer", "gats", "hist", "sfm", "tabnet")

# Seconds of training per 10,000 samples with Qlib's Alpha360 benchmark settings on one CPU thread, as
# `python -m qpipe.bench costs` measured them (2-core AMD EPYC, 2026-12-01). Only the order matters:
# a run that trains several models trains the cheapest first.
TRAINING_COST = {"mlp": 0.9, "tabnet": 1.0, "gats": 2.3, "hist": 2.4, "gru": 3.0, "lstm": 3.4, "alstm": 4.3,
                 "sfm": 56.5, "transformer": 73.9, "localformer": 78.5}


class UnknownModelError(LookupError):
    pass


def get_spec(name: str) -> ModelSpec:
    if name.lower() not in ARCHITECTURES:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(ARCHITECTURES))}")
    return importlib.import_module(f"qpipe.models.{name.lower()}").SPEC


def spec_for_qlib_class(qlib_class: str) -> ModelSpec:
    """The architecture a Qlib model class (task.model.class) stands for."""
    specs = [get_spec(name) for name in ARCHITECTURES]
    for spec in specs:
        if qlib_class in spec.qlib_classes:
            return spec
    known = sorted(c for spec in specs for c in spec.qlib_classes)
    raise UnknownModelError(f"Qlib model class {qlib_class!r} has no qpipe architecture; supported: {', '.join(known)}")
