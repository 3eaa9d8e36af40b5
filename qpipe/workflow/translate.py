"""A Qlib workflow YAML (what ``qrun`` reads) in qpipe's terms: every key is honoured, honoured with a named
difference, or not honoured with the reason; none is dropped in silence.

The translation is qpipe's settings (the source, market, benchmark), the runs that materialize the
workflow's assets (prices and features over the handler's span, one checkpoint whose windows are the
train and valid segments, predictions, IC and backtest over the test segment) and their run config.

translate() reads the file step by step; what each part means is said by the modules beside this one:
handler_entries (the handler), segments (the split), rolling (RollingGen), model_entries and record_entries.
"""

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qpipe.evaluation.backtest import REGION_DEFAULTS, close_match
from qpipe.features.handler import Processing
from qpipe.features.store import FEATURE_SETS, LABEL_HORIZON, LOOKBACK
from qpipe.models.config import LOADER_HANDLER, ConfigError, ModelConfig, config_from_qlib_document, read_qlib_yaml
from qpipe.models.registry import model_name
from qpipe.workflow.entries import Entry, Reader, date, short
from qpipe.workflow.handler_entries import (batch_entry, fit_window_entries, handler_arguments, handler_span,
                                            label_entry, processor_entries)
from qpipe.workflow.model_entries import model_entries, without_pickles
from qpipe.workflow.record_entries import backtest_benchmark, record_entries
from qpipe.workflow.rolling import Rolling, rolling_checkpoints, rolling_entries, rolling_gen
from qpipe.workflow.segments import Checkpoint, fixed_split, segment_entries

# what other modules import from here, some of it from the modules above
__all__ = ["Checkpoint", "Entry", "Rolling", "Workflow", "read_qlib_yaml", "rolling_gen", "translate"]

REGION_EXCHANGES = {"cn": "XSHG", "us": "XNYS"}


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
    # A DataHandlerLP's loader: set -> column -> expression, the QPIPE_FEATURE_SETS its runs read (home.settle)
    feature_sets: dict[str, dict[str, str]] | None = None

    @property
    def name(self) -> str:
        """The model's name, its assets' (``lstm``; ``lstm_alpha158``: a variant of QPIPE_MODELS), as a home of
        QPIPE_MODELS=all,all_alpha158 names it."""
        return model_name(self.model.model, self.model.feature_set)

    @property
    def data_end(self) -> dt.date:
        """The last session of prices, features and labels the runs materialize."""
        return max(self.span[1], self.ic_tail[1]) if self.ic_tail else self.span[1]  # (only where an IC reads them)

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
                lines += [f"    {e.key:<{width}}  {short(e.value)} -> {e.meaning}" for e in chosen]
        lines.append(f"  runs (sessions counted on {self.sessions_from}):")
        lines.append("    settings: " + " ".join(f"{k}={v}" for k, v in self.settings.items()))
        name, features = self.name, self.model.feature_set
        lines += [f"    1. raw/prices, raw/universe, raw/concepts {self.prices_from}..{self.data_end}",
                  f"    2. features/{features}, features/label {self.span[0]}..{self.data_end}",
                  f"    3. models/{name}_checkpoint on " + ", ".join(
                      f"{c.day} (train_days {c.train_days}, valid_days {c.valid_days})" for c in self.checkpoints),
                  f"    4. {', '.join(self.test_assets())} {self.test[0]}..{self.test[1]}"
                  + (", each session scored by the newest checkpoint" if len(self.checkpoints) > 1 else "")]
        if self.ic_tail:  # (qpipe.workflow.run.stages makes these runs)
            lines.append(f"    5. reports/{name}_ic {self.ic_tail[0]}..{self.ic_tail[1]}: the ICs of the test "
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
        name = self.name
        assets = [f"predictions/{name}_predictions"]
        if self.ranks_on_the_leaderboard:
            assets.append(f"reports/{name}_ic")
        if self.port_analysis is not None:
            assets.append(f"reports/{name}_backtest")
        return assets


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


def _in_the_provider(r: Reader, provider: Path, market: str, benchmark: Any, benchmark_key: str) -> None:
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
    r = Reader(path, read_qlib_yaml(path))
    r.get("task.model.class", required=True)
    model = config_from_qlib_document(without_pickles(r.document), path)
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
    benchmark, benchmark_key = backtest_benchmark(r)
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
    loader = r.get(f"{handler}.class") == LOADER_HANDLER
    r.say(f"{handler}.class", "honoured", f"feature set {model.feature_set}")
    _module(r, f"{handler}.module_path", "qlib.data.dataset.handler" if loader else "qlib.contrib.data.handler")
    r.say("task.dataset.class", "honoured", "flat rows" if model.step_len is None else
          f"windows of {model.step_len} sessions")
    _module(r, "task.dataset.module_path", "qlib.data.dataset")
    if r.get("task.dataset.kwargs.step_len") is not None:
        r.say("task.dataset.kwargs.step_len", "honoured", f"step_len {model.step_len}")

    kwargs = f"{handler}.kwargs"
    handler_arguments(r, kwargs, str(r.get(f"{handler}.class")), model)
    days, sessions_from = _sessions(provider, region)
    span = handler_span(r, kwargs, days)
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
        to_the_end = name == "test" and value[1] is None  # Qlib: to the end of the data
        if to_the_end:
            value = [value[0], span[1]]
        bounds[name] = tuple(date(v, f"{segments}.{name}", path) for v in value)
        if bounds[name][0] > bounds[name][1] and not to_the_end:  # (an end not written: the span's check names it)
            raise ConfigError(f"{path}: {segments}.{name} = [{bounds[name][0]}, {bounds[name][1]}]: the start is after "
                              "the end (expected [start, end])")
        if not span[0] <= bounds[name][0] or bounds[name][1] > span[1]:
            raise ConfigError(f"{path}: {segments}.{name} = [{bounds[name][0]}, {bounds[name][1]}] is not a span "
                              f"inside the handler's {span[0]}..{span[1]}")
    first = int(np.searchsorted(days, np.datetime64(span[0], "D")))
    lookback = max(LOOKBACK, FEATURE_SETS[model.feature_set].lookback)  # (a loader's expressions may read more)
    prices_from = days[max(0, first - lookback)].item()  # the history Qlib's expressions read before start_time
    settings["QPIPE_PARTITIONS_START"] = str(prices_from)
    split = fixed_split(days, bounds, path)
    segment_entries(r, segments, bounds, split)
    rolling = rolling_entries(r, rolling, split)
    fit_window_entries(r, kwargs, days, (split.day(split.train[0]), split.day(split.valid[0] - 1)), rolling)
    processing = processor_entries(r, kwargs, model)
    model_entries(r, model, processing)
    label = r.get(f"{kwargs}.label")
    if label is not None:
        label_entry(r, f"{kwargs}.label", label)

    def sessions(bound: tuple[dt.date, dt.date]) -> np.ndarray:
        return days[(days >= np.datetime64(bound[0], "D")) & (days <= np.datetime64(bound[1], "D"))]

    features, test = sessions(span), sessions(bounds["test"])
    records, port_analysis = record_entries(r, exchange, days, (test[0].item(), test[-1].item()), benchmark)
    _anchor_entries(r)
    for key in r.unread():
        r.entries.append(Entry(key, r.get(key), "not honoured", "not a key qpipe knows: ignored"))
    checkpoints = rolling_checkpoints(split, bounds["test"], rolling) if rolling else [split.checkpoint_entry()]
    if here:  # (a refusal the checkpoint's run makes, after prices and features are written)
        batch_entry(r, model, provider, market, days, checkpoints)
    after = days[days > test[-1]][:LABEL_HORIZON]
    own = FEATURE_SETS[model.feature_set].expressions if loader else None
    settings["QPIPE_MODELS"] = model_name(model.model, model.feature_set)  # (a variant's assets exist where it names it)
    return Workflow(path, model, processing, settings, prices_from, (features[0].item(), features[-1].item()),
                    checkpoints, (test[0].item(), test[-1].item()), port_analysis, records, r.entries, sessions_from,
                    len(test), (after[0].item(), after[-1].item()) if len(after) else None,
                    {model.feature_set: own} if own else None)


def _anchor_entries(r: Reader) -> None:
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


def _module(r: Reader, key: str, expected: str) -> None:
    value = r.get(key)
    if value is not None:
        r.say(key, "honoured" if value == expected else "not honoured",
              "Qlib's own class" if value == expected else f"qpipe has only {expected}'s classes")
