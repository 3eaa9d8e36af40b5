"""The dataset handler's arguments in qpipe (Alpha158, Alpha360): its span, the window its processors are fitted
on, its processor chains and its label, each refused where Qlib's handler would raise; and the batch that the
smallest train window must hold."""

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from qpipe.evaluation.backtest import close_match
from qpipe.features.handler import Processing, chain_names, handler_processing
from qpipe.models.config import LOADER_HANDLER, ConfigError, ModelConfig
from qpipe.models.registry import get_spec
from qpipe.workflow.entries import Entry, Reader, date, short
from qpipe.workflow.rolling import Rolling
from qpipe.workflow.segments import Checkpoint, session

QLIB_LABEL = ["Ref($close, -2) / Ref($close, -1) - 1"]


# The arguments Qlib's Alpha158 and Alpha360 take: their own (label popped from **kwargs), then DataHandlerLP's and
# DataHandler's, which their **kwargs reach; any other name is a TypeError there (data_loader: a second value).
QLIB_HANDLER_READ = ("instruments", "start_time", "end_time", "fit_start_time", "fit_end_time", "infer_processors",
                     "learn_processors", "process_type", "label")  # read where translate() says what they mean
QLIB_HANDLER_EMPTY = {  # none given is Qlib's default and qpipe's; any other -> why qpipe does not apply it
    "filter_pipe": "qpipe trains on all the market's members: Qlib's dynamic instrument filters are not built",
    "inst_processors": "qpipe's features are computed from the stored prices: Qlib's per-instrument processors "
                       "are not built",
    "shared_processors": "qpipe fits the infer and learn chains only; name these processors in both"}
QLIB_HANDLER_MEMORY = ("drop_raw", "init_data", "fetch_orig")  # how Qlib's handler holds its data in memory


def handler_arguments(r: Reader, key: str, handler: str, model: ModelConfig) -> None:
    """The handler's arguments that translate() does not read elsewhere: reported, or refused where Qlib's handler
    would raise (TypeError), with the closest valid name. A DataHandlerLP takes a data_loader where Alpha158 and
    Alpha360 take a label."""
    given = r.get(key) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{r.path}: {key} = {short(given)}: expected a mapping of {handler}'s arguments")
    read = [*(name for name in QLIB_HANDLER_READ if name != "label"), "data_loader"] if handler == LOADER_HANDLER \
        else QLIB_HANDLER_READ
    valid = (*read, "freq", *QLIB_HANDLER_EMPTY, *QLIB_HANDLER_MEMORY)
    if handler == LOADER_HANDLER:
        loader_entries(r, f"{key}.data_loader", model)
    for name, value in given.items():
        if name not in valid:
            raise ConfigError(f"{r.path}: {key}.{name} = {short(value)}: not an argument of Qlib's {handler} (Qlib "
                              f"refuses it: TypeError){close_match(name, valid)}; valid: {', '.join(valid)}")
        if name == "freq":
            daily = str(value).lower() in ("day", "1day", "d", "1d")
            r.say(f"{key}.{name}", "honoured" if daily else "not honoured",
                  "daily features" if daily else "qpipe's features are daily")
        elif name in QLIB_HANDLER_EMPTY:
            r.say(f"{key}.{name}", "not honoured" if value else "honoured",
                  QLIB_HANDLER_EMPTY[name] if value else "none (Qlib's default)")
        elif name in QLIB_HANDLER_MEMORY:
            r.say(f"{key}.{name}", "not honoured", "Qlib's handling of the data in memory, no bearing on the "
                  "figures: qpipe reads its feature store")


def loader_entries(r: Reader, key: str, model: ModelConfig) -> None:
    """A DataHandlerLP's QlibDataLoader: its expressions are the workflow's own feature set (read, and refused where
    wrong, by config_from_qlib_document); its label must be qpipe's."""
    from qpipe.features.store import FEATURE_SETS

    fs = FEATURE_SETS[model.feature_set]
    r.say(f"{key}.class", "honoured", f"features/{model.feature_set}: its {len(fs.columns)} expressions, computed by "
          f"qpipe's operators from {fs.lookback} sessions before each day (QPIPE_FEATURE_SETS in the workflow's home)")
    module = r.get(f"{key}.module_path")
    if module is not None:
        r.say(f"{key}.module_path", "honoured" if module == "qlib.data.dataset.loader" else "not honoured",
              "Qlib's own class" if module == "qlib.data.dataset.loader" else "qpipe has only Qlib's QlibDataLoader")
    r.say(f"{key}.kwargs.config.feature", "honoured", ", ".join(fs.columns))
    label = r.get(f"{key}.kwargs.config.label")
    if label is not None:
        label_entry(r, f"{key}.kwargs.config.label", label)


def handler_span(r: Reader, kwargs: str, days: np.ndarray) -> tuple[dt.date, dt.date]:
    """The handler's start_time and end_time; end_time null is Qlib's "to the end of the data": the calendar's last
    session (up to today: an exchange's calendar runs on into the future)."""
    start = date(r.get(f"{kwargs}.start_time", required=True), f"{kwargs}.start_time", r.path)
    first = days[0].item()
    r.say(f"{kwargs}.start_time", "honoured", f"prices and features from {start}" if start >= first else
          f"prices and features from {first}, the calendar's first session: the data begin after start_time (Qlib "
          "reads from there too)")
    end = r.get(f"{kwargs}.end_time", required=True)
    if end is None:
        end = days[days <= np.datetime64(dt.date.today(), "D")][-1].item()
        r.say(f"{kwargs}.end_time", "honoured", f"prices and features to the calendar's last session, {end} (Qlib: "
              "null is to the end of the data)")
        return start, end
    end, last = date(end, f"{kwargs}.end_time", r.path), days[-1].item()
    r.say(f"{kwargs}.end_time", "honoured", f"prices and features to {end}" if end <= last else
          f"prices and features to {last}, the calendar's last session: the data end before end_time (Qlib reads "
          "to there too)")
    return start, end


def fit_window_entries(r: Reader, kwargs: str, days: np.ndarray, train: tuple[dt.date, dt.date],
                        rolling: Rolling | None) -> None:
    """fit_start_time and fit_end_time against the sessions of the train window the checkpoint fits its processors on.
    Under rolling, each checkpoint fits them on its own train window, whose end (and under ROLL_SD its start) moves
    with it, where Qlib's RollingGen keeps the template's fit_start_time and fit_end_time."""
    moving = () if rolling is None else ("fit_end_time", "fit_start_time") if rolling.rtype == "ROLL_SD" else (
        "fit_end_time",)
    for key, bound in (("fit_start_time", train[0]), ("fit_end_time", train[1])):
        value = r.get(f"{kwargs}.{key}")
        if value is None:
            continue
        same = session(days, date(value, key, r.path), key == "fit_start_time") == bound
        if same and key in moving:
            r.say(f"{kwargs}.{key}", "changed", f"each rolling checkpoint fits the processors on its own train window, "
                  f"whose {key.split('_')[1]} moves with it (Qlib's RollingGen keeps the template's {key}: its "
                  "normalization statistics)")
        else:
            r.say(f"{kwargs}.{key}", "honoured" if same else "not honoured",
                  "processors fitted on the train window" if same else
                  f"qpipe fits processors on the train window ({train[0]}..{train[1]}), not on another span")


def processor_entries(r: Reader, kwargs: str, model: ModelConfig) -> Processing:
    """The handler's processor chains, fitted and saved by the checkpoint (a chain not named: the handler's default)."""
    given = {key: r.get(f"{kwargs}.{key}") for key in ("infer_processors", "learn_processors", "process_type")}
    processing = handler_processing(model.feature_set, {k: v for k, v in given.items() if v is not None},
                                    f"{r.path}: {kwargs}")
    for key, entries in (("infer_processors", processing.infer_processors),
                         ("learn_processors", processing.learn_processors)):
        if given[key] is not None:
            r.say(f"{kwargs}.{key}", "honoured",
                  f"{chain_names(entries)}, fitted on the train window and saved in the checkpoint")
        else:  # what applies all the same: the handler's own chain
            r.entries.append(Entry(f"{kwargs}.{key}", chain_names(entries), "honoured", "(the handler's default; "
                                   "not in the YAML) fitted on the train window and saved in the checkpoint"))
    if given["process_type"] is not None:
        r.say(f"{kwargs}.process_type", "honoured", "training reads " + (
            "the learn chain applied after the infer chain" if processing.process_type == "append"
            else "the learn chain applied to the raw features, predictions the infer chain's"))
    return processing


def label_entry(r: Reader, key: str, label: Any) -> None:
    """Qlib's label, as a list of expressions or as its handlers' ``([expressions], [names])``; another is refused:
    the checkpoints would train on, and the IC would be of, qpipe's label all the same."""
    expressions = label[0] if (isinstance(label, list | tuple) and len(label) == 2
                               and all(isinstance(part, list | tuple) for part in label)) else label
    if not isinstance(expressions, list | tuple):
        expressions = [expressions]
    if [str(x).replace(" ", "") for x in expressions] != [x.replace(" ", "") for x in QLIB_LABEL]:
        raise ConfigError(f"{r.path}: {key} = {short(label)}: qpipe trains on, and reports the IC against, one "
                          f"label, Qlib's default {QLIB_LABEL[0]}; remove the key or set it to that")
    r.say(key, "honoured", "features/label, Qlib's label")


def _member_sessions(provider: Path, market: str, days: np.ndarray) -> np.ndarray:
    """The members of instruments/<market>.txt on each session of ``days``, summed from the first: [len(days) + 1]."""
    from qpipe.data.qlib_provider import read_instruments

    spans = read_instruments(provider, market)
    starts = np.sort(spans["start_date"].to_numpy().astype("datetime64[D]"))
    ends = np.sort(spans["end_date"].to_numpy().astype("datetime64[D]"))
    members = np.searchsorted(starts, days, "right") - np.searchsorted(ends, days, "left")
    return np.concatenate([[0], np.cumsum(members)])


def batch_entry(r: Reader, model: ModelConfig, provider: Path, market: str, days: np.ndarray,
                 checkpoints: list[Checkpoint]) -> None:
    """A batch of more samples than the smallest train window holds is refused (the checkpoint's sampler would
    refuse it once prices and features are written); else batch_size's line says how many samples that window holds
    at most: the market's members over its sessions, fewer where a member lacks prices or a label (not counted here:
    that needs the features)."""
    from qpipe.training.dataset import windows_as_of

    if get_spec(model.model).sampler == "daily":  # one day per batch: batch_size is not read
        return
    batch, summed = model.params["batch_size"], _member_sessions(provider, market, days)

    def window(c: Checkpoint) -> tuple[int, int]:
        train = windows_as_of(days, c.day, c.train_days, c.valid_days).train
        return tuple(int(np.searchsorted(days, np.datetime64(d, "D"))) for d in train)

    first, last = min((window(c) for c in checkpoints), key=lambda w: summed[w[1] + 1] - summed[w[0]])
    samples, span = int(summed[last + 1] - summed[first]), f"{days[first]}..{days[last]}"
    key = "task.model.kwargs.batch_size"
    if samples < batch:
        qlib = ("Qlib's DNNModelPytorch draws batches with replacement and would train; qpipe draws without"
                if r.get("task.model.class") == "DNNModelPytorch" else
                "Qlib's training loop drops an incomplete batch and would train on none")
        raise ConfigError(f"{r.path}: {key} = {batch}: the train window {span} holds at most {samples} training "
                          f"samples (the members of instruments/{market}.txt over its {last - first + 1} sessions), "
                          f"fewer than one batch ({qlib}): lower batch_size to at most {samples}")
    said = (f"; the train window {span} holds at most {samples} samples (the members of instruments/{market}.txt "
            f"over its sessions), {samples // batch} batch{'es' if samples // batch > 1 else ''} a pass, fewer where "
            "members lack prices or labels")
    index = next((i for i, e in enumerate(r.entries) if e.key == key), None)
    if index is None:
        r.entries.append(Entry(key, batch, "honoured", "(the class default; not in the YAML) " + said[2:]))
    else:
        r.entries[index] = dataclasses.replace(r.entries[index], meaning=r.entries[index].meaning + said)
