"""Qlib's DataHandlerLP processing: a checkpoint's infer and learn processor chains and how they combine.

``DK_I = infer(raw)`` is what predictions read. ``DK_L`` is what training reads: ``learn(DK_I)`` with
``process_type: append`` (Qlib's default) or ``learn(raw)`` with ``independent``. Every processor is
fitted on the checkpoint's train window (Qlib's ``fit_start_time``/``fit_end_time``), each on the
previous one's output, and saved with the checkpoint.
"""

import copy
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from qpipe.features.alpha158 import FILTER_COL_20
from qpipe.features.label import LABEL_NAME
from qpipe.features.processors import (LABEL_PREFIX, DropnaLabel, DropnaProcessor, FitWindowProcessor, ProcessorChain,
                                       build_processor, column_block)
from qpipe.models.config import ConfigError

Entry = dict[str, Any]  # {"class": ..., "kwargs": {...}} as in a Qlib YAML

# The benchmark workflows' chains (examples/benchmarks/*/workflow_config_*.yaml).
BENCHMARK_INFER: list[Entry] = [{"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
                                {"class": "Fillna", "kwargs": {"fields_group": "feature"}}]
BENCHMARK_LEARN: list[Entry] = [{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}]
FILTER_20: Entry = {"class": "FilterCol", "kwargs": {"fields_group": "feature", "col_list": list(FILTER_COL_20)}}
# Alpha158's and Alpha360's own defaults (qlib/contrib/data/handler.py), for a YAML whose handler names no chain.
HANDLER_INFER: dict[str, list[Entry]] = {
    "alpha158": [],
    "alpha360": [{"class": "ProcessInf"}, {"class": "ZScoreNorm"}, {"class": "Fillna"}],
}
HANDLER_LEARN: list[Entry] = [{"class": "DropnaLabel"}, {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}]
_ANY_WINDOW = ("2000-01-03", "2000-01-04")  # to check an entry before the train window is known


def canonical(entry: Any) -> Entry:
    """A YAML entry as {class, kwargs}: a bare class name becomes {class: name}; module_path is dropped."""
    if isinstance(entry, str):
        return {"class": entry, "kwargs": {}}
    if not isinstance(entry, dict) or "class" not in entry:
        raise ValueError(f"{entry!r} is not a processor (a class name, or a mapping with class and kwargs)")
    return {"class": entry["class"], "kwargs": dict(entry.get("kwargs") or {})}


class Processing(BaseModel):
    """The processors of a checkpoint, with Qlib's names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    infer_processors: list[Entry]
    learn_processors: list[Entry]
    process_type: Literal["append", "independent"] = "append"

    @field_validator("infer_processors", "learn_processors", mode="before")
    @classmethod
    def _known_processors(cls, entries: Any, info) -> list[Entry]:
        """Each entry built once: an unknown class or kwarg is named, and so is a label filter among infer processors."""
        if not isinstance(entries, list):
            raise ValueError(f"must be a list of processors, not {type(entries).__name__}")
        checked = []
        for i, entry in enumerate(entries):
            try:
                entry = canonical(entry)
                built = build_processor(entry, *_ANY_WINDOW)
            except ValueError as error:
                raise ValueError(f"[{i}]: {error}") from None
            if info.field_name == "infer_processors" and not built.is_for_infer():
                raise ValueError(f"[{i}]: {entry['class']} drops rows by label: Qlib allows it only in "
                                 "learn_processors (a prediction scores every row)")
            checked.append(entry)
        return checked

    def chains(self, fit_start, fit_end) -> tuple[ProcessorChain, ProcessorChain]:
        """The infer and learn chains, unfitted, with the fit window injected where a processor takes one."""
        window = (str(pd.Timestamp(fit_start).date()), str(pd.Timestamp(fit_end).date()))
        return (ProcessorChain.from_config(self.infer_processors, *window),
                ProcessorChain.from_config(self.learn_processors, *window))

    def trained_columns(self, columns: list[str]) -> list[str]:
        """The columns a network trained on a frame with ``columns`` reads (those the chains leave)."""
        infer, learn = self.chains(*_ANY_WINDOW)
        return learn.select_columns(infer.select_columns(columns) if self.process_type == "append" else columns)

    def names(self) -> str:
        """e.g. "infer DropCol + CSZFillna; learn DropCol + DropnaProcessor + DropnaLabel + CSZScoreNorm (independent)"."""
        return (f"infer {chain_names(self.infer_processors)}; learn {chain_names(self.learn_processors)} "
                f"({self.process_type})")


def chain_names(entries: list[Entry]) -> str:
    """e.g. "DropCol + CSZFillna"."""
    return " + ".join(e["class"] for e in entries) or "no processor"


def processing(source: str, **fields: Any) -> Processing:
    """A Processing from config fields; an error names ``source``, the key, the entry and what is wrong with it."""
    try:
        return Processing(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        joined = f"{where}{message}" if message.startswith("[") or not where else f"{where} {message}"
        raise ConfigError(f"{source}: {joined}") from None


def benchmark_processing(feature_set: str, step_len: int | None) -> Processing:
    """Qlib's benchmark chains; the Alpha158 sequence models (TSDatasetH) read its 20 FilterCol columns."""
    sequence_alpha158 = feature_set == "alpha158" and step_len is not None
    return Processing(infer_processors=([FILTER_20] if sequence_alpha158 else []) + BENCHMARK_INFER,
                      learn_processors=BENCHMARK_LEARN)


def handler_processing(feature_set: str, kwargs: dict[str, Any], source: str) -> Processing:
    """The processing a Qlib handler's kwargs ask for; a chain they do not name is the handler's default (a
    DataHandlerLP's, of a loader's own expressions: none)."""
    alpha = feature_set in HANDLER_INFER
    return processing(source, infer_processors=kwargs.get("infer_processors", HANDLER_INFER.get(feature_set, [])),
                      learn_processors=kwargs.get("learn_processors", HANDLER_LEARN if alpha else []),
                      process_type=kwargs.get("process_type", "append"))


def read_columns(columns: list[str], infer: ProcessorChain, learn: ProcessorChain | None = None,
                 process_type: str = "append") -> list[str]:
    """The ``columns`` the chains read (those a leading FilterCol or DropCol keeps), so a reader leaves the rest out.

    With ``independent`` the learn chain reads the raw columns too; ``learn`` None: a prediction's read.
    """
    keep = set(infer.read_columns(columns))
    if learn is not None and process_type == "independent":
        keep |= set(learn.read_columns(columns))
    return [c for c in columns if c in keep]


def learn_frame(features: pd.DataFrame, label: pd.DataFrame, infer: ProcessorChain, learn: ProcessorChain,
                process_type: str, labels: dict | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Fit both chains and return DK_L as (features, label), rows and columns as the chains left them.

    ``labels``, for blocks of columns of the same rows (``column_separable``): the label after each processor of
    the label group, kept by the first block and taken by the next ones instead of computing it again.
    Refused when the infer chain would give a prediction other columns than the learn chain gives training.
    """
    inferred = _fit_apply(infer, features, label, labels, "infer")
    learned = _fit_apply(learn, *(inferred if process_type == "append" else (features, label)), labels, "learn")
    missing = [c for c in learned[0].columns if c not in inferred[0].columns]
    if missing:
        raise ValueError(f"the learn processors keep columns the infer processors drop ({', '.join(missing[:5])}): "
                         "a model trained on them could not score a day")
    if LABEL_NAME not in learned[1].columns:
        raise ValueError(f"the processors drop the label {LABEL_NAME}: there is nothing to train on")
    return learned[0], learned[1][LABEL_NAME]


def column_separable(infer: ProcessorChain, learn: ProcessorChain) -> bool:
    """Whether the chains treat each feature column on its own (beside the label), so that fitting and applying
    them a few columns at a time gives the same values and statistics: only a DropnaProcessor over the features
    looks across columns (every other processor's statistic is per column, or per column and day)."""
    return not any(isinstance(p, DropnaProcessor) and p.fields_group != "label"
                   for p in infer.processors + learn.processors)


def joined(chains: list[ProcessorChain]) -> ProcessorChain:
    """One fitted chain from the same chain fitted on blocks of columns (``column_separable``): each statistic's
    columns joined in block order, then the label's, which every block saw, as a fit on all columns orders them."""
    processors = []
    for versions in zip(*(chain.processors for chain in chains), strict=True):
        first = versions[0]
        if not isinstance(first, FitWindowProcessor):
            processors.append(first)  # stateless: every block's is the same
            continue
        stats: dict[str, tuple[np.generic, np.generic]] = {}
        for proc in (p for p in versions if hasattr(p, "std_train")):  # a label-group one is fitted by the first alone
            for k, name in enumerate(proc.columns):
                stats.setdefault(name, (proc.mean_train[k], proc.std_train[k]))
        names = sorted(stats, key=lambda name: str(name).startswith(LABEL_PREFIX))  # stable: features keep their order
        merged = copy.copy(first)
        merged.columns = names
        merged.mean_train = np.array([stats[n][0] for n in names], dtype=first.mean_train.dtype)
        merged.std_train = np.array([stats[n][1] for n in names], dtype=first.std_train.dtype)
        processors.append(merged)
    return ProcessorChain(processors)


def infer_frame(infer: ProcessorChain, features: pd.DataFrame) -> pd.DataFrame:
    """A fitted infer chain applied to the features a prediction reads (DK_I without the label).

    A statistic fitted over every column (ZScoreNorm without a fields_group, as Alpha360's own handler has it)
    covers the label too: the frame gets an unknown label for it, as a prediction's rows have.
    """
    fitted_on_label = any(str(c).startswith(LABEL_PREFIX) for p in infer.processors for c in getattr(p, "columns", ()))
    if not fitted_on_label:
        return infer(features)
    return infer(features.assign(**{LABEL_NAME: np.float32(np.nan)})).drop(columns=[LABEL_NAME])


def _fit_apply(chain: ProcessorChain, features: pd.DataFrame, label: pd.DataFrame, labels: dict | None = None,
               stage: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each processor fitted on the previous one's output and applied, as Qlib's IT_FIT_SEQ.

    The features and the label stay two frames, each one block of memory: a processor of one group sees only
    that frame (pandas copies a many-column block when a frame of two blocks is sliced), one that works column
    by column is applied to each, a row filter drops the same rows from both. Only a statistic fitted over
    every column at once sees them joined.
    """
    for step, proc in enumerate(chain.processors):
        group = getattr(proc, "fields_group", None)
        if group == "label" and labels is not None and (stage, step) in labels:
            label = labels[stage, step]  # another block's: a label-group processor reads the label alone
        elif isinstance(proc, DropnaLabel | DropnaProcessor):
            parts = {"feature": (features,), "label": (label,)}.get(group, (features, label))
            keep = np.logical_and.reduce([~np.isnan(column_block(p, list(p.columns))).any(axis=1) for p in parts])
            if not keep.all():
                features, label = features[keep], label[keep]
        elif group in ("feature", "label"):
            part = features if group == "feature" else label
            proc.fit(part)
            features, label = (proc(part), label) if group == "feature" else (features, proc(part))
            if group == "label" and labels is not None:
                labels[stage, step] = label
        elif isinstance(proc, FitWindowProcessor):
            joint = features.join(label)
            proc.fit(joint)
            joint = proc(joint)
            features, label = joint[list(features.columns)], joint[list(label.columns)]
        else:
            proc.fit(features)  # stateless: nothing is learnt
            features, label = proc(features), proc(label)
    return features, label
