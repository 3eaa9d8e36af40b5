"""Every architecture qpipe trains. Adding one = its file in qpipe/models/ + one line here."""

from qpipe.models import alstm, gru, lstm, mlp
from qpipe.models.spec import ModelSpec

SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        mlp.SPEC,
        lstm.SPEC,
        gru.SPEC,
        alstm.SPEC,
    )
}


class UnknownModelError(LookupError):
    pass


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name.lower()]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(SPECS))}") from None


def spec_for_qlib_class(qlib_class: str) -> ModelSpec:
    """The architecture a Qlib model class (task.model.class) stands for."""
    for spec in SPECS.values():
        if qlib_class in spec.qlib_classes:
            return spec
    known = sorted(c for spec in SPECS.values() for c in spec.qlib_classes)
    raise UnknownModelError(f"Qlib model class {qlib_class!r} has no qpipe architecture; supported: {', '.join(known)}")
