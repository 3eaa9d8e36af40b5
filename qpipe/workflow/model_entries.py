"""The model's entries: its class and kwargs as qpipe's trainer reads them (honoured, changed or not read), a
network refused before any run when it cannot read the columns the processors leave, and Qlib's pickled base models,
never loaded."""

from qpipe.features.handler import Processing
from qpipe.features.store import FEATURE_SETS
from qpipe.models.config import GENERAL_PTNN, QLIB_IGNORED, ConfigError, ModelConfig
from qpipe.models.registry import get_spec, model_name
from qpipe.models.spec import ModelSpec
from qpipe.workflow.entries import Entry, Reader


def without_pickles(document: dict) -> dict:
    """The document without a ``model_path`` to a pickle (Qlib's pretrained base models), which qpipe never loads."""
    kwargs = (document.get("task") or {}).get("model", {}).get("kwargs") or {}
    if not str(kwargs.get("model_path", "")).endswith((".pkl", ".pickle", ".pt", ".pth")):
        return document
    model = {**document["task"]["model"], "kwargs": {k: v for k, v in kwargs.items() if k != "model_path"}}
    return {**document, "task": {**document["task"], "model": model}}


def model_entries(r: Reader, model: ModelConfig, processing: Processing) -> None:
    r.say("task.model.class", "honoured", f"architecture {model.model}: models/"
          f"{model_name(model.model, model.feature_set)}_checkpoint")
    r.say("task.model.module_path", "honoured", "(the class names the architecture)")
    columns = processing.trained_columns(list(FEATURE_SETS[model.feature_set].columns))
    refusal = _network_refusal(model, columns)
    if refusal:
        spec = get_spec(model.model)
        arguments = ", ".join(f"{k}={model.params[k]}" for k in spec.net_parameters() if k in model.params)
        raise ConfigError(f"{r.path}: task.model.kwargs: the network {spec.net.__name__}({arguments}) {refusal}")
    trainer = _trainer_spec(r.get("task.model.class"), model)
    not_read = trainer.qlib_not_read if trainer else {}
    changed = _trainer_changes(r, model, trainer)
    for key, value in (r.get("task.model.kwargs") or {}).items():
        if key in changed:
            r.say(f"task.model.kwargs.{key}", "changed", changed[key])
        elif key == "model_path" and model.params.get("model_path") is None:
            r.say(f"task.model.kwargs.{key}", "not honoured", "a pickled file is never loaded (loading never runs code): "
                  "the base model starts from scratch; name a qpipe checkpoint of it to start from its weights")
        elif key in not_read:
            r.say(f"task.model.kwargs.{key}", "not honoured", not_read[key])
        elif key == "max_steps" and key not in model.params:  # DNNModelPytorch's schedule, read as epochs
            r.say(f"task.model.kwargs.{key}", "honoured", f"n_epochs {model.params['n_epochs']} of "
                  f"{model.params['steps_per_epoch']} steps (eval_steps)")
        elif key in QLIB_IGNORED:
            r.say(f"task.model.kwargs.{key}", "not honoured",
                  "qpipe picks the device (QPIPE_DEVICE)" if key == "GPU" else "batches are gathered on the device")
        elif key == "pt_model_uri":
            r.say(f"task.model.kwargs.{key}", "honoured", f"the network of architecture {model.model}")
        else:
            r.say(f"task.model.kwargs.{key}", "honoured", "hyper-parameter of the checkpoint")


def _trainer_spec(model_class: str, model: ModelConfig) -> ModelSpec | None:
    """The spec whose ``from_qlib`` read the class's kwargs, whose qlib_not_read and qlib_changed say what the class's
    trainer does with them: DNNModelPytorch's is the MLP's whatever its network; None for GeneralPTNN, whose kwargs
    are read as they are."""
    if model_class == GENERAL_PTNN:
        return None
    return get_spec("mlp" if model_class == "DNNModelPytorch" else model.model)


def _trainer_changes(r: Reader, model: ModelConfig, trainer: ModelSpec | None) -> dict[str, str]:
    """The kwargs qpipe trains with otherwise than the Qlib class, each with how; one the YAML does not name (the
    class default applies) is reported here, under its key."""
    changes = {}
    for key, how in (trainer.qlib_changed if trainer else {}).items():
        said = how(model.params[key]) if key in model.params else ""
        if said:
            changes[key] = said
    given = r.get("task.model.kwargs") or {}
    for key in set(changes) - set(given):
        r.entries.append(Entry(f"task.model.kwargs.{key}", model.params[key], "changed",
                               f"(the class default; not in the YAML) {changes[key]}"))
    return changes


def _network_refusal(model: ModelConfig, columns: list[str]) -> str:
    """Why the network of ``model`` cannot score what the processors leave ("" when it can): one forward pass on
    zeros of the run's shape: flat rows [2, columns], TSDatasetH windows [2, step_len, columns], or (a sequence model
    on DatasetH) Alpha360 rows cut into d_feat blocks of lags, [2, lags, d_feat]; it must give one score per row."""
    import torch

    cannot_read = f"cannot read the {len(columns)} columns the processors leave:"
    spec, params = get_spec(model.model), model.params
    d_feat = params.get("d_feat")
    if spec.sampler == "flat":
        shape = (2, len(columns))
    elif model.step_len is not None:
        if d_feat != len(columns):
            return f"{cannot_read} windows of {model.step_len} sessions of {len(columns)} columns, but d_feat = {d_feat}"
        shape = (2, model.step_len, len(columns))
    else:
        from qpipe.training.samplers import lag_blocks_problem

        problem = lag_blocks_problem(columns, d_feat)
        if problem:
            return f"{cannot_read} {problem}"
        shape = (2, len(columns) // d_feat, d_feat)
    inputs = [torch.zeros(shape)] + ([torch.zeros(2, 1)] if spec.reads_concepts else [])
    try:
        with torch.no_grad():
            scores = spec.build(params).eval()(*inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        return f"{cannot_read} inputs {list(shape)}: {str(error).splitlines()[0]}"
    if tuple(scores.shape) != (2,):  # (found in review: a [B, 1] output passed, to fail after the first epoch)
        return (f"returns scores of shape {list(scores.shape)} for inputs {list(shape)}: it must return one score per "
                "sample, shape [2] (for [B, 1]: .squeeze(-1))")
    return ""
