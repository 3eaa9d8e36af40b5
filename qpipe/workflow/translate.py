"""A Qlib workflow YAML (what ``qrun`` reads) in qpipe's terms: every key is honoured, honoured with a named
difference, or not honoured with the reason; none is dropped in silence.

The translation is qpipe's settings (the source, market, benchmark), the runs that materialize the
workflow's assets (prices and features over the handler's span, one checkpoint whose windows are the
train and valid segments, predictions, IC and backtest over the test segment) and their run config.
"""

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qpipe.features.handler import Processing, chain_names, handler_processing
from qpipe.features.store import FEATURE_SETS, LABEL_HORIZON, LOOKBACK
from qpipe.evaluation.backtest import (EXCHANGE_SETTINGS, QLIB_EXCHANGE_ONLY, QLIB_STRATEGY_ONLY, REGION_DEFAULTS,
                                       STRATEGY_SETTINGS, backtest_config, close_match)
from qpipe.models.config import (GENERAL_PTNN, QLIB_IGNORED, ConfigError, ModelConfig, config_from_qlib_document,
                                 read_qlib_yaml)
from qpipe.models.registry import get_spec
from qpipe.models.spec import ModelSpec

Status = Literal["honoured", "changed", "not honoured"]
QLIB_LABEL = ["Ref($close, -2) / Ref($close, -1) - 1"]
REGION_EXCHANGES = {"cn": "XSHG", "us": "XNYS"}


@dataclass(frozen=True)
class Entry:
    key: str  # the dotted path in the YAML
    value: Any
    status: Status
    meaning: str  # what qpipe does with it, or why it cannot


@dataclass(frozen=True)
class Rolling:
    """Qlib's ``RollingGen(step, rtype)``: a checkpoint every ``step`` sessions of the test segment, its train window
    sliding (ROLL_SD) or growing from the train segment's start (ROLL_EX); each test day is scored by the newest
    checkpoint, which is how ``RollingEnsemble`` joins the windows' predictions. One difference: the last session
    of a window is scored by the next window's checkpoint, trained at that close (every qpipe prediction uses the
    newest checkpoint trained by the day's close), where Qlib scores it with the window's own model."""

    step: int
    rtype: Literal["ROLL_EX", "ROLL_SD"] = "ROLL_EX"


@dataclass(frozen=True)
class Checkpoint:
    day: dt.date  # the close that knows its valid window's last label, at the latest the session before its test
    train_days: int
    valid_days: int


@dataclass(frozen=True)
class _Split:
    """The fixed split in session indices of ``days``: the segments' first and last sessions and the checkpoint's.

    The run's windows are ``windows_as_of(days, checkpoint, train_days, valid_days)``: the valid window is the
    ``valid_days`` sessions ending LABEL_HORIZON sessions before the checkpoint (the last label known at its
    close), the train window the ``train_days`` sessions before it."""

    days: np.ndarray
    train: tuple[int, int]
    valid: tuple[int, int]
    test_start: int
    checkpoint: int

    @property
    def valid_end(self) -> int:
        return self.checkpoint - LABEL_HORIZON

    @property
    def train_days(self) -> int:
        return self.valid[0] - self.train[0]

    @property
    def valid_days(self) -> int:
        return self.valid_end - self.valid[0] + 1

    @property
    def lead(self) -> int:
        """Sessions between the checkpoint and the session before the test (0 when the valid segment reaches it)."""
        return self.test_start - 1 - self.checkpoint

    def day(self, index: int) -> dt.date:
        return self.days[index].item()

    def checkpoint_entry(self) -> Checkpoint:
        return Checkpoint(self.day(self.checkpoint), int(self.train_days), int(self.valid_days))


@dataclass(frozen=True)
class Workflow:
    """A Qlib workflow, translated."""

    path: Path
    model: ModelConfig
    processing: Processing  # the handler's infer and learn chains
    settings: dict[str, str]  # QPIPE_* environment of the runs
    prices_from: dt.date  # the history the first day's features need
    span: tuple[dt.date, dt.date]  # features (sessions)
    checkpoints: list[Checkpoint]  # one for a fixed split, one per window when rolling
    test: tuple[dt.date, dt.date]  # predictions, IC and backtest (sessions)
    port_analysis: dict[str, Any] | None  # reports/<arch>_backtest's run config; None without a PortAnaRecord
    records: list[str]
    entries: list[Entry]
    sessions_from: str  # whose calendar counted the sessions
    test_sessions: int
    # The sessions after the test segment whose closes know its last labels (LABEL_HORIZON, as far as the data go):
    # Qlib's expressions read prices past end_time for them (found in review: qpipe's IC left the last two out)
    labels_known: tuple[dt.date, dt.date] | None = None

    @property
    def data_end(self) -> dt.date:
        """The last session of prices, features and labels the runs materialize."""
        return max(self.span[1], self.labels_known[1]) if self.labels_known else self.span[1]

    def not_honoured(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "not honoured"]

    def with_epochs(self, epochs: int) -> "Workflow":
        """The workflow trained ``epochs`` epochs (qrun's --epochs: a quick run on a CPU), which the report names as
        a change from Qlib's run (early stopping still applies)."""
        model = dataclasses.replace(self.model, params={**self.model.params, "n_epochs": epochs})
        entry = Entry("--epochs", epochs, "changed", f"n_epochs {epochs}, not {self._epochs_given()} (qpipe qrun "
                      "--epochs: a quick run)")
        return dataclasses.replace(self, model=model, entries=[*self.entries, entry])

    def _epochs_given(self) -> str:
        """Where the workflow's epochs come from: the YAML's n_epochs, its max_steps (DNNModelPytorch), or the
        class default."""
        was = self.model.params["n_epochs"]
        keys = {e.key for e in self.entries if e.status == "honoured"}
        if "task.model.kwargs.n_epochs" in keys:
            return f"the YAML's {was}"
        if "task.model.kwargs.max_steps" in keys:
            return f"the YAML's {was} (max_steps)"
        return f"the default {was}"

    def report(self) -> str:
        lines = [f"{self.path.name} -> qpipe: {self.model.model} on {self.model.feature_set}"
                 + (f", TSDatasetH step_len {self.model.step_len}" if self.model.step_len else "")]
        width = max(len(e.key) for e in self.entries)
        for status in ("honoured", "changed", "not honoured"):
            chosen = [e for e in self.entries if e.status == status]
            if chosen:
                lines.append(f"  {status} ({len(chosen)}):")
                lines += [f"    {e.key:<{width}}  {_short(e.value)} -> {e.meaning}" for e in chosen]
        lines.append(f"  runs (sessions counted on {self.sessions_from}):")
        lines.append("    settings: " + " ".join(f"{k}={v}" for k, v in self.settings.items()))
        arch, features = self.model.model, self.model.feature_set
        lines += [f"    1. raw/prices, raw/universe, raw/concepts {self.prices_from}..{self.data_end}",
                  f"    2. features/{features}, features/label {self.span[0]}..{self.data_end}",
                  f"    3. models/{arch}_checkpoint on " + ", ".join(
                      f"{c.day} (train_days {c.train_days}, valid_days {c.valid_days})" for c in self.checkpoints),
                  f"    4. {', '.join(self.test_assets())} {self.test[0]}..{self.test[1]}"
                  + (", each session scored by the newest checkpoint" if len(self.checkpoints) > 1 else "")]
        if self.ic_tail:  # (qpipe.workflow.run.stages makes these runs)
            lines.append(f"    5. reports/{arch}_ic {self.ic_tail[0]}..{self.ic_tail[1]}: the ICs of the test "
                         "segment's last sessions, whose labels are known after it (as Qlib reads them)")
        if self.ranks_on_the_leaderboard:
            lines.append(f"    {5 + bool(self.ic_tail)}. reports/leaderboard, printed at the end")
        if self.ranks_on_the_leaderboard or self.port_analysis is not None:
            lines.append("    then the records' figures of the test segment, printed as Qlib's qrun prints them")
        departures = [e.key for e in self.entries if e.status != "honoured"]
        if departures:  # the last line a user reads before the runs: what makes the figures differ from Qlib's run
            lines.append(f"  not as Qlib runs it ({len(departures)}, above): {', '.join(departures)}")
        return "\n".join(lines)

    @property
    def ic_tail(self) -> tuple[dt.date, dt.date] | None:
        """The IC report's partitions after the test segment: those that score its last sessions."""
        return self.labels_known if self.ranks_on_the_leaderboard else None

    @property
    def ranks_on_the_leaderboard(self) -> bool:
        """The leaderboard ranks models by their IC report (SigAnaRecord's)."""
        return "SigAnaRecord" in self.records

    def test_assets(self) -> list[str]:
        arch = self.model.model
        assets = [f"predictions/{arch}_predictions"]
        if self.ranks_on_the_leaderboard:
            assets.append(f"reports/{arch}_ic")
        if self.port_analysis is not None:
            assets.append(f"reports/{arch}_backtest")
        return assets


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, list | tuple) and all(isinstance(v, dt.date) for v in value):
        value = "[" + ", ".join(v.isoformat() for v in value) + "]"
    text = str(value.isoformat() if isinstance(value, dt.date) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _date(value: Any, key: str, path: Path) -> dt.date:
    try:
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{path}: {key} = {value!r} is not a date (YYYY-MM-DD)") from None


class _Reader:
    """Walks the document; each key read is marked, so every key not read is reported as unknown."""

    def __init__(self, path: Path, document: dict) -> None:
        self.path, self.document, self.entries, self.read = path, document, [], set()

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        node = self.document
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    near = close_match(part, map(str, node)) if isinstance(node, dict) else ""
                    raise ConfigError(f"{self.path}: missing {key}{near or ' (not a Qlib workflow YAML?)'}")
                return default
            node = node[part]
        self.read.add(key)
        return node

    def say(self, key: str, status: Status, meaning: str, value: Any = None) -> None:
        read = self.get(key)
        self.entries.append(Entry(key, read if value is None else value, status, meaning))

    def unread(self, node: Any = None, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` that nothing read (a key read reads all below it)."""
        node = self.document if node is None else node
        if prefix in self.read:
            return []
        if not isinstance(node, dict):
            return [prefix]
        return [k for key, value in node.items() for k in self.unread(value, f"{prefix}.{key}" if prefix else key)]


def _sessions(provider: Path, region: str) -> tuple[np.ndarray, str]:
    """The provider's own calendar (what a run uses) when it is here, else the region's exchange."""
    from qpipe.calendar import exchange_calendar

    day_txt = provider / "calendars" / "day.txt"
    if day_txt.exists():
        from qpipe.data.qlib_provider import read_calendar

        return np.asarray(read_calendar(provider)).astype("datetime64[D]"), f"{day_txt}"
    code = REGION_EXCHANGES.get(region, "XSHG")
    return exchange_calendar(code, "2000-01-03").trading_days("2000-01-03", "2100-01-01"), \
        f"{code} (exchange-calendars; the provider directory is not on this machine)"


def _in_the_provider(r: _Reader, provider: Path, market: str, benchmark: Any, benchmark_key: str) -> None:
    """The market file and the benchmark's folder are in the provider directory, or ConfigError names them."""
    markets = sorted(p.stem for p in (provider / "instruments").glob("*.txt"))
    if market not in markets:
        key = "market" if r.get("market") is not None else "task.dataset.kwargs.handler.kwargs.instruments"
        raise ConfigError(f"{r.path}: {key} = {market!r}: {provider} has no instruments/{market}.txt (its markets: "
                          f"{', '.join(markets) or 'none'}){close_match(market, markets)}")
    if benchmark is not None and not (provider / "features" / str(benchmark).lower()).is_dir():
        raise ConfigError(f"{r.path}: {benchmark_key} = {benchmark!r}: {provider} has no "
                          f"features/{str(benchmark).lower()} folder for it (leave benchmark out to compare with the "
                          "equal-weighted market)")


def translate(path: str | Path, rolling: Rolling | None = None) -> Workflow:
    """Read a Qlib workflow YAML and say what each of its keys means in qpipe; ``rolling`` (or the YAML's
    ``rolling: {step, rtype}``) retrains through the test segment as RollingGen does. Raises ConfigError (naming
    the file, the key and the value) for what is not a Qlib workflow or cannot be valid."""
    path = Path(path)
    r = _Reader(path, read_qlib_yaml(path))
    r.get("task.model.class", required=True)
    model = config_from_qlib_document(_without_pickles(r.document), path)
    settings: dict[str, str] = {"QPIPE_SOURCE": "qlib"}

    provider = Path(str(r.get("qlib_init.provider_uri", required=True))).expanduser()
    settings["QPIPE_SOURCE_PATH"] = str(provider)
    here = (provider / "calendars" / "day.txt").is_file()  # a Qlib provider directory on this machine
    r.say("qlib_init.provider_uri", "honoured", f"QPIPE_SOURCE=qlib, QPIPE_SOURCE_PATH={provider}"
          + ("" if here else
             " (not a Qlib provider directory here, no calendars/day.txt: a run refuses it; `qpipe dump-bin "
             "SOURCE DIR` writes one from a CSV/Parquet source)"))
    region = str(r.get("qlib_init.region", "cn"))
    if region in REGION_EXCHANGES:
        exchange = REGION_DEFAULTS[region]
        r.say("qlib_init.region", "honoured", "the provider's own calendar; in the backtest unless its exchange_kwargs "
              "say otherwise: " + ", ".join(f"{k} {v}" for k, v in exchange.items()), value=region)
    else:
        r.say("qlib_init.region", "not honoured", f"qpipe knows the regions {', '.join(REGION_EXCHANGES)}", value=region)
        exchange = {}
    market = str(r.get("market") or r.get("task.dataset.kwargs.handler.kwargs.instruments", required=True))
    settings["QPIPE_QLIB_MARKET"] = market
    if r.get("market") is not None:
        r.say("market", "honoured", f"QPIPE_QLIB_MARKET={market}: the members of instruments/{market}.txt, ingested, "
              "trained on and scored")
    benchmark, benchmark_key = _benchmark(r)
    if benchmark is not None:
        settings["QPIPE_BENCHMARK"] = str(benchmark)
    top = r.get("benchmark")
    if top is not None:  # a YAML anchor in Qlib's files, which Qlib itself never reads
        r.say("benchmark", "honoured" if top == benchmark else "not honoured",
              f"QPIPE_BENCHMARK={benchmark}: ingested beside the market, the backtest's benchmark" if top == benchmark
              else f"Qlib reads the backtest's benchmark, {benchmark!r}, not this key")
    if here:  # what it lacks is found now, not after minutes of prices and features
        _in_the_provider(r, provider, market, benchmark, benchmark_key)

    handler = "task.dataset.kwargs.handler"
    r.say(f"{handler}.class", "honoured", f"feature set {model.feature_set}")
    _module(r, f"{handler}.module_path", "qlib.contrib.data.handler")
    r.say("task.dataset.class", "honoured", "flat rows" if model.step_len is None else
          f"windows of {model.step_len} sessions")
    _module(r, "task.dataset.module_path", "qlib.data.dataset")
    if r.get("task.dataset.kwargs.step_len") is not None:
        r.say("task.dataset.kwargs.step_len", "honoured", f"step_len {model.step_len}")

    kwargs = f"{handler}.kwargs"
    _handler_arguments(r, kwargs, str(r.get(f"{handler}.class")))
    days, sessions_from = _sessions(provider, region)
    span = _handler_span(r, kwargs, days)
    instruments = r.get(f"{kwargs}.instruments")
    if instruments is not None:
        r.say(f"{kwargs}.instruments", "honoured" if str(instruments) == market else "not honoured",
              "the market's members" if str(instruments) == market else f"qpipe trains on the market {market} only")

    segments = "task.dataset.kwargs.segments"
    bounds = {}
    for name in ("train", "valid", "test"):
        value = r.get(f"{segments}.{name}", required=True)
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ConfigError(f"{path}: {segments}.{name} = {value!r}: expected [start, end]")
        if name == "test" and value[1] is None:  # Qlib: to the end of the data
            value = [value[0], span[1]]
        bounds[name] = tuple(_date(v, f"{segments}.{name}", path) for v in value)
        if bounds[name][0] > bounds[name][1]:
            raise ConfigError(f"{path}: {segments}.{name} = [{bounds[name][0]}, {bounds[name][1]}]: the start is after "
                              "the end (expected [start, end])")
        if not span[0] <= bounds[name][0] or bounds[name][1] > span[1]:
            raise ConfigError(f"{path}: {segments}.{name} = [{bounds[name][0]}, {bounds[name][1]}] is not a span "
                              f"inside the handler's {span[0]}..{span[1]}")
    first = int(np.searchsorted(days, np.datetime64(span[0], "D")))
    prices_from = days[max(0, first - LOOKBACK)].item()  # the history Qlib's expressions read before start_time
    settings["QPIPE_PARTITIONS_START"] = str(prices_from)
    split = _fixed_split(days, bounds, path)
    _segment_entries(r, segments, bounds, split)
    rolling = _rolling_entries(r, rolling, split)
    _fit_window_entries(r, kwargs, days, (split.day(split.train[0]), split.day(split.valid[0] - 1)), rolling)
    processing = _processor_entries(r, kwargs, model)
    _model_entries(r, model, processing)
    label = r.get(f"{kwargs}.label")
    if label is not None:
        _label_entry(r, f"{kwargs}.label", label)

    def sessions(bound: tuple[dt.date, dt.date]) -> np.ndarray:
        return days[(days >= np.datetime64(bound[0], "D")) & (days <= np.datetime64(bound[1], "D"))]

    features, test = sessions(span), sessions(bounds["test"])
    records, port_analysis = _record_entries(r, exchange, days, (test[0].item(), test[-1].item()), benchmark)
    _anchor_entries(r)
    for key in r.unread():
        r.entries.append(Entry(key, r.get(key), "not honoured", "not a key qpipe knows: ignored"))
    checkpoints = _rolling_checkpoints(split, bounds["test"], rolling) if rolling else [split.checkpoint_entry()]
    if here:  # (a refusal the checkpoint's run makes, after prices and features are written)
        _batch_entry(r, model, provider, market, days, checkpoints)
    after = days[days > test[-1]][:LABEL_HORIZON]
    return Workflow(path, model, processing, settings, prices_from, (features[0].item(), features[-1].item()),
                    checkpoints, (test[0].item(), test[-1].item()), port_analysis, records, r.entries, sessions_from,
                    len(test), (after[0].item(), after[-1].item()) if len(after) else None)


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


def _handler_arguments(r: _Reader, key: str, handler: str) -> None:
    """The handler's arguments that translate() does not read elsewhere: reported, or refused where Qlib's handler
    would raise (TypeError), with the closest valid name."""
    given = r.get(key) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{r.path}: {key} = {_short(given)}: expected a mapping of {handler}'s arguments")
    valid = (*QLIB_HANDLER_READ, "freq", *QLIB_HANDLER_EMPTY, *QLIB_HANDLER_MEMORY)
    for name, value in given.items():
        if name not in valid:
            raise ConfigError(f"{r.path}: {key}.{name} = {_short(value)}: not an argument of Qlib's {handler} (Qlib "
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


def _member_sessions(provider: Path, market: str, days: np.ndarray) -> np.ndarray:
    """The members of instruments/<market>.txt on each session of ``days``, summed from the first: [len(days) + 1]."""
    from qpipe.data.qlib_provider import read_instruments

    spans = read_instruments(provider, market)
    starts = np.sort(spans["start_date"].to_numpy().astype("datetime64[D]"))
    ends = np.sort(spans["end_date"].to_numpy().astype("datetime64[D]"))
    members = np.searchsorted(starts, days, "right") - np.searchsorted(ends, days, "left")
    return np.concatenate([[0], np.cumsum(members)])


def _batch_entry(r: _Reader, model: ModelConfig, provider: Path, market: str, days: np.ndarray,
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


def _label_entry(r: _Reader, key: str, label: Any) -> None:
    """Qlib's label, as a list of expressions or as its handlers' ``([expressions], [names])``; another is refused:
    the checkpoints would train on, and the IC would be of, qpipe's label all the same."""
    expressions = label[0] if (isinstance(label, list | tuple) and len(label) == 2
                               and all(isinstance(part, list | tuple) for part in label)) else label
    if not isinstance(expressions, list | tuple):
        expressions = [expressions]
    if [str(x).replace(" ", "") for x in expressions] != [x.replace(" ", "") for x in QLIB_LABEL]:
        raise ConfigError(f"{r.path}: {key} = {_short(label)}: qpipe trains on, and reports the IC against, one "
                          f"label, Qlib's default {QLIB_LABEL[0]}; remove the key or set it to that")
    r.say(key, "honoured", "features/label, Qlib's label")


def _handler_span(r: _Reader, kwargs: str, days: np.ndarray) -> tuple[dt.date, dt.date]:
    """The handler's start_time and end_time; end_time null is Qlib's "to the end of the data": the calendar's last
    session (up to today: an exchange's calendar runs on into the future)."""
    start = _date(r.get(f"{kwargs}.start_time", required=True), f"{kwargs}.start_time", r.path)
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
    end, last = _date(end, f"{kwargs}.end_time", r.path), days[-1].item()
    r.say(f"{kwargs}.end_time", "honoured", f"prices and features to {end}" if end <= last else
          f"prices and features to {last}, the calendar's last session: the data end before end_time (Qlib reads "
          "to there too)")
    return start, end


def _rolling_entries(r: _Reader, given: Rolling | None, split: _Split) -> Rolling | None:
    """The command line's RollingGen, else the YAML's top-level ``rolling`` key (qpipe's; Qlib builds RollingGen in
    code)."""
    in_yaml = r.get("rolling")
    if in_yaml is None:
        return given
    if not isinstance(in_yaml, dict) or set(in_yaml) - {"step", "rtype"} or "step" not in in_yaml:
        raise ConfigError(f"{r.path}: rolling = {in_yaml!r}: expected {{step: N, rtype: ROLL_EX or ROLL_SD}}")
    yaml_rolling = rolling_gen(in_yaml["step"], in_yaml.get("rtype", "ROLL_EX"), f"{r.path}: rolling")
    if given is None:
        r.say("rolling", "honoured", f"RollingGen(step={yaml_rolling.step}, rtype={yaml_rolling.rtype})"
              + _rolling_lead(split))
        return yaml_rolling
    r.say("rolling", "changed", f"the command line's RollingGen(step={given.step}, rtype={given.rtype}) instead"
          + _rolling_lead(split))
    return given


def _rolling_lead(split: _Split) -> str:
    """What an earlier checkpoint (the valid segment ending before the session before the test) changes in RollingGen's
    windows: each checkpoint stays ``step`` sessions after the one before, so each is ``lead`` sessions early too."""
    if not split.lead:
        return ""
    n = split.lead + 1
    return (f"; each checkpoint is {split.lead} session{'s' if split.lead > 1 else ''} before the session before its "
            f"window (where its shifted valid segment's last label is known), so the last {n} sessions of every window "
            "but the last are scored by the next window's checkpoint, where Qlib scores them with the window's own "
            "model")


def rolling_gen(step: Any, rtype: Any, source: str) -> Rolling:
    """A RollingGen from Qlib's arguments; ``rtype`` also as ``expanding`` / ``sliding``."""
    rtype = {"expanding": "ROLL_EX", "sliding": "ROLL_SD"}.get(str(rtype).lower(), str(rtype).upper())
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"{source}: step = {step!r}: a positive number of sessions")
    if rtype not in ("ROLL_EX", "ROLL_SD"):
        raise ConfigError(f"{source}: rtype = {rtype!r}: ROLL_EX (expanding) or ROLL_SD (sliding)")
    return Rolling(step, rtype)


def _rolling_checkpoints(split: _Split, test: tuple[dt.date, dt.date], rolling: Rolling) -> list[Checkpoint]:
    """RollingGen's tasks: the test segment cut into windows of ``step`` sessions, one checkpoint each, every one
    ``step`` sessions after the one before (RollingGen shifts every segment by ``step``); the train window slides
    with it, or grows by ``step`` each time (expanding)."""
    days = split.days
    last = int(np.searchsorted(days, np.datetime64(test[1], "D"), "right")) - 1
    first = split.checkpoint_entry()
    return [Checkpoint(days[split.checkpoint + i * rolling.step].item(),
                       first.train_days + (i * rolling.step if rolling.rtype == "ROLL_EX" else 0), first.valid_days)
            for i in range((last - split.test_start) // rolling.step + 1)]


def _anchor_entries(r: _Reader) -> None:
    """Top-level holders of YAML anchors (``data_handler_config: &data_handler_config``) that ``task`` refers to."""
    where: dict[int, str] = {}

    def visit(node: Any, key: str) -> None:
        where.setdefault(id(node), key)
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for name, child in children:
            visit(child, f"{key}.{name}" if isinstance(name, str) else f"{key}[{name}]")

    visit(r.document.get("task"), "task")
    for key, value in r.document.items():
        if key in ("task", "qlib_init", "rolling") or not isinstance(value, dict | list):
            continue
        if key == "sys":
            r.say(key, "not honoured", "Qlib's qrun adds these paths to sys.path, for modules of the workflow's own; "
                  "qpipe runs its own networks only")
        elif id(value) in where:
            r.say(key, "honoured", f"a YAML anchor, read at {where[id(value)]}", value="&" + key)
        elif key not in r.read:  # one line for it, not one for each key below (a record removed, its config left)
            r.say(key, "not honoured", "nothing in task refers to it: Qlib does not read it either")


def _module(r: _Reader, key: str, expected: str) -> None:
    value = r.get(key)
    if value is not None:
        r.say(key, "honoured" if value == expected else "not honoured",
              "Qlib's own class" if value == expected else f"qpipe has only {expected}'s classes")


def _without_pickles(document: dict) -> dict:
    """The document without a ``model_path`` to a pickle (Qlib's pretrained base models), which qpipe never loads."""
    kwargs = (document.get("task") or {}).get("model", {}).get("kwargs") or {}
    if not str(kwargs.get("model_path", "")).endswith((".pkl", ".pickle", ".pt", ".pth")):
        return document
    model = {**document["task"]["model"], "kwargs": {k: v for k, v in kwargs.items() if k != "model_path"}}
    return {**document, "task": {**document["task"], "model": model}}


def _model_entries(r: _Reader, model: ModelConfig, processing: Processing) -> None:
    r.say("task.model.class", "honoured", f"architecture {model.model}: models/{model.model}_checkpoint")
    r.say("task.model.module_path", "honoured", "(the class names the architecture)")
    columns = processing.trained_columns(list(FEATURE_SETS[model.feature_set].columns))
    refusal = _network_refusal(model, columns)
    if refusal:
        spec = get_spec(model.model)
        arguments = ", ".join(f"{k}={model.params[k]}" for k in spec.net_parameters() if k in model.params)
        raise ConfigError(f"{r.path}: task.model.kwargs: the network {spec.net.__name__}({arguments}) cannot read the "
                          f"{len(columns)} columns the processors leave: {refusal}")
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


def _trainer_changes(r: _Reader, model: ModelConfig, trainer: ModelSpec | None) -> dict[str, str]:
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
    """Why the network of ``model`` cannot read what the processors leave ("" when it can): one forward pass on zeros
    of the run's shape: flat rows [2, columns], TSDatasetH windows [2, step_len, columns], or (a sequence model on
    DatasetH) Alpha360 rows cut into d_feat blocks of lags, [2, lags, d_feat]."""
    import torch

    spec, params = get_spec(model.model), model.params
    d_feat = params.get("d_feat")
    if spec.sampler == "flat":
        shape = (2, len(columns))
    elif model.step_len is not None:
        if d_feat != len(columns):
            return f"windows of {model.step_len} sessions of {len(columns)} columns, but d_feat = {d_feat}"
        shape = (2, model.step_len, len(columns))
    else:
        from qpipe.training.samplers import lag_blocks_problem

        problem = lag_blocks_problem(columns, d_feat)
        if problem:
            return problem
        shape = (2, len(columns) // d_feat, d_feat)
    inputs = [torch.zeros(shape)] + ([torch.zeros(2, 1)] if spec.reads_concepts else [])
    try:
        with torch.no_grad():
            spec.build(params).eval()(*inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        return f"inputs {list(shape)}: {str(error).splitlines()[0]}"
    return ""


def _fixed_split(days: np.ndarray, bounds: dict, path: Path) -> _Split:
    """One checkpoint for the test segment, trained on the train segment's labels and stopped early on the valid
    segment's: on the session whose close knows the valid segment's last label (LABEL_HORIZON sessions after it),
    or, when that falls in the test segment, on the session before the test starts. An earlier checkpoint is fine:
    each test day is scored by the newest checkpoint at or before it (predictions asset)."""
    def index(day: dt.date, side: str) -> int:
        return int(np.searchsorted(days, np.datetime64(day, "D"), side))

    order = ("train", "valid", "test")
    for earlier, later in zip(order, order[1:]):
        if bounds[later][0] <= bounds[earlier][0]:
            raise ConfigError(f"{path}: task.dataset.kwargs.segments.{later} starts at {bounds[later][0]}, not after "
                              f"the {earlier} segment's start ({bounds[earlier][0]}): the segments go train, valid, "
                              "test, in time")
    first_test = index(bounds["test"][0], "left")
    if first_test == 0 or first_test >= len(days):
        raise ConfigError(f"{path}: task.dataset.kwargs.segments.test starts at {bounds['test'][0]}, outside the "
                          f"calendar's {days[0]}..{days[-1]}")
    train, valid = ((index(bounds[name][0], "left"), index(bounds[name][1], "right") - 1)
                    for name in ("train", "valid"))
    split = _Split(days, train, valid, first_test, min(valid[1] + LABEL_HORIZON, first_test - 1))
    if split.valid_days < 5 or split.train_days < 20:
        raise ConfigError(f"{path}: task.dataset.kwargs.segments: {split.train_days} train and {split.valid_days} valid "
                          "sessions of known labels; a checkpoint needs at least 20 and 5")
    return split


def _segment_entries(r: _Reader, segments: str, bounds: dict, split: _Split) -> None:
    r.say(f"{segments}.train", *_train_segment(split))
    r.say(f"{segments}.valid", *_valid_segment(split))
    checkpoint = split.day(split.checkpoint)
    r.say(f"{segments}.test", "honoured", f"models/<arch>_checkpoint on {checkpoint}; predictions from "
          f"{bounds['test'][0]} to {bounds['test'][1]}" + ("" if not split.lead else
          f" ({checkpoint}: the close that knows the valid segment's last label; each test day is scored by the "
          "newest checkpoint at or before it)"))
    for extra in ("pretrain", "pretrain_validation"):  # TabNet's pretraining segments
        if r.get(f"{segments}.{extra}") is not None:
            same = [_date(v, extra, r.path) for v in r.get(f"{segments}.{extra}")] == \
                   list(bounds["train" if extra == "pretrain" else "valid"])
            r.say(f"{segments}.{extra}", "honoured" if same else "not honoured",
                  f"TabNet pretrains on the {'train' if extra == 'pretrain' else 'valid'} window" + ("" if same else
                  ", not on a segment of its own"))


def _train_segment(split: _Split) -> tuple[Status, str]:
    """The train window runs from the train segment's first session to the session before the valid window."""
    last = split.valid[0] - 1
    said = f"train_days {split.train_days}"
    if split.train[1] == last:
        return "honoured", said
    if split.train[1] < last:
        return "changed", f"{said} (to {split.day(last)}: qpipe's train window ends where valid starts)"
    return "changed", (f"{said}, to {split.day(last)}: the valid segment starts inside the train segment, and "
                       "qpipe's train and valid windows do not overlap (train ends the session before valid starts)")


def _valid_segment(split: _Split) -> tuple[Status, str]:
    said = f"valid_days {split.valid_days}"
    if split.valid_end == split.valid[1]:
        return "honoured", said
    end = split.day(split.valid_end)
    if split.valid[1] >= split.test_start:
        return "changed", (f"{said}, to {end}: the valid segment runs into the test segment; qpipe's valid window "
                           f"ends {LABEL_HORIZON} sessions before the test starts (the last label known by then)")
    n = split.valid[1] - split.valid_end
    return "changed", (f"{said}, to {end}: the labels of the valid segment's last {n} session{'s' if n > 1 else ''} "
                       "use prices of the test segment (Qlib's look-ahead, not copied)")


def _session(days: np.ndarray, day: dt.date, first: bool) -> dt.date | None:
    """The first session on or after ``day`` (``first``), else the last on or before it."""
    i = int(np.searchsorted(days, np.datetime64(day, "D"), "left" if first else "right")) - (0 if first else 1)
    return days[i].item() if 0 <= i < len(days) else None


def _fit_window_entries(r: _Reader, kwargs: str, days: np.ndarray, train: tuple[dt.date, dt.date],
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
        same = _session(days, _date(value, key, r.path), key == "fit_start_time") == bound
        if same and key in moving:
            r.say(f"{kwargs}.{key}", "changed", f"each rolling checkpoint fits the processors on its own train window, "
                  f"whose {key.split('_')[1]} moves with it (Qlib's RollingGen keeps the template's {key}: its "
                  "normalization statistics)")
        else:
            r.say(f"{kwargs}.{key}", "honoured" if same else "not honoured",
                  "processors fitted on the train window" if same else
                  f"qpipe fits processors on the train window ({train[0]}..{train[1]}), not on another span")


def _processor_entries(r: _Reader, kwargs: str, model: ModelConfig) -> Processing:
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


def _records(r: _Reader) -> list:
    records = r.get("task.record") or []
    return [records] if isinstance(records, dict) else list(records)


def _record_name(record: Any) -> Any:
    """The class a record names (``qlib.workflow.record_temp.PortAnaRecord`` too)."""
    name = record.get("class") if isinstance(record, dict) else record
    return name.rpartition(".")[2] if isinstance(name, str) else name


def _benchmark(r: _Reader) -> tuple[str | None, str]:
    """The benchmark Qlib's backtest takes: PortAnaRecord's ``config.backtest.benchmark`` (the top-level
    ``benchmark`` of Qlib's files is an anchor of it, read by nothing), else the top-level key, qpipe's own reading
    for a workflow whose backtest names none; and the key it is under."""
    for i, record in enumerate(_records(r)):
        if isinstance(record, dict) and _record_name(record) == "PortAnaRecord":
            key = f"task.record[{i}].kwargs.config.backtest.benchmark"
            value = (((record.get("kwargs") or {}).get("config") or {}).get("backtest") or {}).get("benchmark")
            if isinstance(value, list | tuple | dict):
                raise ConfigError(f"{r.path}: {key} = {_short(value)}: qpipe's benchmark is one instrument of the "
                                  "provider (Qlib's list of several, their mean change, is not built)")
            if value is not None:
                return str(value), key
    top = r.get("benchmark")
    return (None if top is None or isinstance(top, list | dict) else str(top)), "benchmark"


QLIB_RECORD_MODULE = "qlib.workflow.record_temp"
QLIB_ONLY_RECORDS = {  # Qlib's other records (Qlib runs them; qpipe does not)
    "HFSignalRecord": "Qlib's high-frequency signal analysis (qpipe's records are daily)",
    "MultiPassPortAnaRecord": "Qlib's repeated backtests from shuffled initial scores (qpipe backtests once)",
    "ACRecordTemp": "Qlib's base class, which records nothing", "RecordTemp": "Qlib's base class, which records nothing"}
# The arguments each record's __init__ takes from the YAML: qrun passes ``recorder`` itself (a second one is a
# TypeError), and PortAnaRecord's **kwargs go to ACRecordTemp.__init__, which takes no other (a TypeError too).
RECORD_ARGUMENTS = {"SignalRecord": ("model", "dataset"),
                    "SigAnaRecord": ("ana_long_short", "ann_scaler", "label_col", "skip_existing"),
                    "PortAnaRecord": ("config", "risk_analysis_freq", "indicator_analysis_freq",
                                      "indicator_analysis_method", "skip_existing")}
RECORD_ASSETS = {"SignalRecord": "predictions/<arch>_predictions over the test segment",
                 "SigAnaRecord": "reports/<arch>_ic: IC, ICIR, Rank IC, Rank ICIR",
                 "PortAnaRecord": "reports/<arch>_backtest (TopkDropoutStrategy on a daily exchange)"}
SKIP_EXISTING = ("each qrun computes its records afresh, as Qlib's qrun does: it starts a new recorder, where "
                 "nothing exists to skip")
INDICATOR_METHODS = ("mean", "amount_weighted", "value_weighted")  # Qlib's indicator_analysis


def _record_class(r: _Reader, key: str, record: Any) -> str:
    """The record's class, refused (Qlib's getattr raises AttributeError) where the module has none of that name;
    its ``module_path`` (or a dotted class) checked against Qlib's record module."""
    given = record.get("class") if isinstance(record, dict) else record
    if not isinstance(given, str):
        raise ConfigError(f"{r.path}: {key} = {_short(record)}: expected {{class: SignalRecord, SigAnaRecord or "
                          "PortAnaRecord, kwargs: {...}}")
    module, _, name = given.rpartition(".")
    module = module or (record.get("module_path") if isinstance(record, dict) else None)
    where = f"{key}.module_path" if "." not in given else f"{key}.class"
    if module is not None and module != QLIB_RECORD_MODULE:
        raise ConfigError(f"{r.path}: {where} = {module!r}: qpipe runs the records of Qlib's {QLIB_RECORD_MODULE} "
                          f"only{close_match(str(module), [QLIB_RECORD_MODULE])}")
    known = (*RECORD_ARGUMENTS, *QLIB_ONLY_RECORDS)
    if name not in known:
        raise ConfigError(f"{r.path}: {key}.class = {given!r}: {QLIB_RECORD_MODULE} has no such record (Qlib: "
                          f"AttributeError){close_match(name, known)}; qpipe runs {', '.join(RECORD_ARGUMENTS)}")
    if isinstance(record, dict) and "module_path" in record:
        r.entries.append(Entry(f"{key}.module_path", module, "honoured", "Qlib's own class"))
    return name


def _record_arguments(r: _Reader, key: str, name: str, kwargs: Any) -> None:
    """Each argument of the record: honoured, not honoured with the reason, or refused where Qlib's __init__ would
    raise (TypeError) with the closest valid name. PortAnaRecord's ``config`` is read by _port_analysis."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{r.path}: {key}.kwargs = {_short(kwargs)}: expected a mapping of {name}'s arguments")
    valid = RECORD_ARGUMENTS[name]
    for argument, value in kwargs.items():
        if argument not in valid:
            raise ConfigError(f"{r.path}: {key}.kwargs.{argument} = {_short(value)}: not an argument of Qlib's {name} "
                              f"(Qlib refuses it: TypeError){close_match(argument, valid)}; valid: {', '.join(valid)}")
        if argument != "config":
            r.entries.append(Entry(f"{key}.kwargs.{argument}", value,
                                   *_record_argument(r, f"{key}.kwargs.{argument}", argument, value)))


def _record_argument(r: _Reader, key: str, argument: str, value: Any) -> tuple[Status, str]:
    if argument in ("model", "dataset"):  # Qlib's qrun fills the placeholders with the trained model and dataset
        placeholder = f"<{argument.upper()}>"
        return ("honoured", "the workflow's checkpoint" if argument == "model" else "the workflow's features") \
            if value == placeholder else ("not honoured", f"qpipe scores the workflow's own {argument} ({placeholder})")
    if argument == "ana_long_short":
        return ("not honoured", "qpipe reports no long-short return; the backtest's tear sheet shows the "
                "top-minus-bottom quantile spread") if value else ("honoured", "no long-short figures (Qlib's default)")
    if argument == "ann_scaler":
        return "not honoured", "it scales only the long-short figures, which qpipe does not report"
    if argument == "label_col":
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, -1):
            return "honoured", "the IC against features/label, the label's one column"
        raise ConfigError(f"{r.path}: {key} = {value!r}: the label has one column (Qlib's default label, the one "
                          "qpipe trains on): label_col 0 (Qlib's IC would fail: IndexError)")
    if argument == "skip_existing":
        return "honoured", SKIP_EXISTING
    if argument == "indicator_analysis_method":
        if value is None or value == "mean":
            return "honoured", "the indicators' mean over the sessions (Qlib's default method)"
        if value in INDICATOR_METHODS:
            return "not honoured", "qpipe's indicators are Qlib's method mean (each session weighted by its orders)"
        raise ConfigError(f"{r.path}: {key} = {value!r}: not a method of Qlib's indicator_analysis (Qlib: KeyError)"
                          f"{close_match(str(value), INDICATOR_METHODS)}; valid: {', '.join(INDICATOR_METHODS)}")
    return _analysis_freq(r, key, value)


def _analysis_freq(r: _Reader, key: str, value: Any) -> tuple[Status, str]:
    """risk_analysis_freq or indicator_analysis_freq: Qlib's Freq.parse of each (a ValueError there is refused);
    qpipe analyses the daily reports only, which are all Qlib's executor (SimulatorExecutor, day) reports too."""
    if value is None:
        return "honoured", "1day, the executor's (Qlib's default)"
    freqs = []
    for freq in [value] if isinstance(value, str) else value if isinstance(value, list) else [value]:
        match = re.fullmatch(r"([0-9]*)(month|mon|week|w|day|d|minute|min)", str(freq))
        if match is None:
            raise ConfigError(f"{r.path}: {key} = {value!r}: {freq!r} is not a frequency of Qlib's (n)month/mon, "
                              "(n)week/w, (n)day/d, (n)minute/min (Qlib: ValueError)")
        unit = {"mon": "month", "w": "week", "d": "day", "minute": "min"}.get(match[2], match[2])
        freqs.append(f"{match[1] or 1}{unit}")
    if set(freqs) == {"1day"}:
        return "honoured", "1day, the daily analysis qpipe prints"
    return "not honoured", (f"qpipe analyses the daily reports only; Qlib, whose executor reports daily, warns that "
                            f"the {', '.join(f for f in freqs if f != '1day')} report is not found and prints none")


def _record_entries(r: _Reader, exchange: dict, days: np.ndarray, test: tuple, benchmark: Any
                    ) -> tuple[list[str], dict | None]:
    """The records; ``test``: the test segment's first and last sessions."""
    names, port_analysis = [], None
    for i, record in enumerate(_records(r)):
        key = f"task.record[{i}]"
        name = _record_class(r, key, record)
        names.append(name)
        if name in QLIB_ONLY_RECORDS:
            r.entries.append(Entry(key, name, "not honoured", f"{QLIB_ONLY_RECORDS[name]}; qpipe runs "
                                   f"{', '.join(RECORD_ARGUMENTS)}"))
            continue
        kwargs = (record.get("kwargs") or {}) if isinstance(record, dict) else {}
        _record_arguments(r, key, name, kwargs)
        if name == "PortAnaRecord":
            port_analysis = _port_analysis(r, f"{key}.kwargs.config", kwargs.get("config") or {}, exchange, days, test,
                                           benchmark)
        r.entries.append(Entry(key, name, "honoured", RECORD_ASSETS[name]))
        for extra in set(record) - {"class", "module_path", "kwargs"} if isinstance(record, dict) else ():
            r.entries.append(Entry(f"{key}.{extra}", record[extra], "not honoured", "not a key of a record (Qlib "
                                   "reads class, module_path and kwargs)"))
    r.read.add("task.record")
    return names, port_analysis


QLIB_STRATEGY_MODULES = ("qlib.contrib.strategy", "qlib.contrib.strategy.signal_strategy")
QLIB_BACKTEST_ONLY = {"pos_type": "qpipe's account holds one kind of position (Qlib's default, Position)"}
N_DROP_ZERO = ("qpipe keeps the holdings; Qlib with n_drop 0 sells every holding each day (its comb[-0:] is the "
               "whole list), a bug not copied")


def _port_analysis(r: _Reader, key: str, config: dict, exchange: dict, days: np.ndarray, test: tuple,
                   benchmark: Any) -> dict:
    """PortAnaRecord's config as the backtest's run config. A name Qlib's TopkDropoutStrategy, Exchange or backtest
    would refuse (a TypeError there) is refused; one Qlib takes and qpipe does not implement is not honoured."""
    strategy, backtest = config.get("strategy") or {}, config.get("backtest") or {}
    _strategy_class(r, f"{key}.strategy", strategy)
    chosen: dict[str, Any] = dict(exchange)  # the region's, under what the YAML names
    kwargs = strategy.get("kwargs") or {}
    chosen |= _qlib_arguments(r, f"{key}.strategy.kwargs", {k: v for k, v in kwargs.items() if k != "signal"},
                              STRATEGY_SETTINGS, QLIB_STRATEGY_ONLY, "TopkDropoutStrategy", ("signal",))
    if kwargs.get("n_drop") == 0:
        r.entries.append(Entry(f"{key}.strategy.kwargs.n_drop", 0, "changed", N_DROP_ZERO))
    for name, value in backtest.items():
        if name == "account":
            chosen["account"] = value
        elif name == "benchmark":  # (a null one is Qlib's "no benchmark": below)
            if value is not None:
                r.entries.append(Entry(f"{key}.backtest.benchmark", value, "honoured", f"QPIPE_BENCHMARK={benchmark}"))
        elif name in ("start_time", "end_time"):
            start = name == "start_time"
            same = value is None or _session(days, _date(value, f"{key}.backtest.{name}", r.path), start) == \
                test[0 if start else 1]
            r.entries.append(Entry(f"{key}.backtest.{name}", value, "honoured" if same else "not honoured",
                                   ("the test segment" + (" (Qlib: the predictions' dates)" if value is None else ""))
                                   if same else "qpipe backtests over the test segment"))
        elif name == "exchange_kwargs":
            chosen |= _qlib_arguments(r, f"{key}.backtest.exchange_kwargs", value or {}, EXCHANGE_SETTINGS,
                                      QLIB_EXCHANGE_ONLY, "Exchange")
            for setting in ("limit_threshold", "trade_unit", "deal_price"):  # Qlib's Exchange: null is the region's
                if setting in chosen and chosen[setting] is None:
                    del chosen[setting]
                    if setting in exchange:
                        chosen[setting] = exchange[setting]
        else:
            _qlib_arguments(r, f"{key}.backtest", {name: value}, (), QLIB_BACKTEST_ONLY, "backtest",
                            ("account", "benchmark", "start_time", "end_time", "exchange_kwargs"))
    if backtest.get("benchmark") is None:  # Qlib's backtest() then takes its default, SH000300; given null, none
        r.entries.append(Entry(f"{key}.backtest.benchmark", None, "changed",
                               (f"QPIPE_BENCHMARK={benchmark}, the workflow's" if benchmark is not None else
                                "the equal-weighted market of the members, as none is named")
                               + (" (Qlib's backtest, given none, takes SH000300)" if "benchmark" not in backtest
                                  else " (Qlib's backtest, given null, with none: a zero return)")))
    for name, value in config.items():
        if name not in ("strategy", "backtest"):
            r.entries.append(Entry(f"{key}.{name}", value, "not honoured", "qpipe's executor is Qlib's benchmark one, "
                                   "SimulatorExecutor(time_per_step=day)" if name == "executor" else
                                   "not a key of PortAnaRecord's config (Qlib does not read it either)"))
    try:
        validated = backtest_config(chosen, f"{r.path}: {key}")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if "deal_price" in chosen:  # Qlib's "$close" is qpipe's "close"
        chosen["deal_price"] = validated.deal_price
    r.entries.append(Entry(f"{key} (strategy, exchange)", f"{len(chosen)} settings", "honoured",  # all, not cut short
                           "reports/<arch>_backtest's port_analysis run config: "
                           + ", ".join(f"{k}={v}" for k, v in chosen.items())))
    return chosen


def _strategy_class(r: _Reader, key: str, strategy: dict) -> None:
    name = strategy.get("class", "TopkDropoutStrategy")
    if name != "TopkDropoutStrategy":
        raise ConfigError(f"{r.path}: {key}.class = {name!r}: qpipe backtests only TopkDropoutStrategy (remove the "
                          "PortAnaRecord or use that strategy)")
    module = strategy.get("module_path")
    if module is not None:
        known = module in QLIB_STRATEGY_MODULES
        r.entries.append(Entry(f"{key}.module_path", module, "honoured" if known else "not honoured",
                               "Qlib's own class" if known else "qpipe has only Qlib's TopkDropoutStrategy"))


def _qlib_arguments(r: _Reader, key: str, given: dict, settings: tuple[str, ...], not_implemented: dict[str, str],
                    qlib_class: str, others: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``settings`` among ``given``; each argument Qlib's class takes that qpipe does not implement is reported
    not honoured with its reason, any other name refused (Qlib would raise) with the closest valid one."""
    if not isinstance(given, dict):
        raise ConfigError(f"{r.path}: {key} = {given!r}: expected a mapping of {qlib_class}'s arguments")
    chosen = {}
    for name, value in given.items():
        if name in settings:
            chosen[name] = value
        elif name in not_implemented:
            r.entries.append(Entry(f"{key}.{name}", value, "not honoured", not_implemented[name]))
        else:
            valid = (*settings, *not_implemented, *others)
            raise ConfigError(f"{r.path}: {key}.{name} = {value!r}: not an argument of Qlib's {qlib_class} (Qlib "
                              f"refuses it){close_match(name, valid)}; valid: {', '.join(valid)}")
    return chosen
