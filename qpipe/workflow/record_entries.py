"""The workflow's records (Qlib's SignalRecord, SigAnaRecord and PortAnaRecord) and their arguments, each refused
where Qlib's record would raise; PortAnaRecord's config as the backtest's run config (its strategy, exchange and
benchmark)."""

import re
from typing import Any

import numpy as np

from qpipe.evaluation.backtest import (EXCHANGE_SETTINGS, QLIB_EXCHANGE_ONLY, QLIB_STRATEGY_ONLY, STRATEGY_SETTINGS,
                                       backtest_config, close_match)
from qpipe.models.config import ConfigError
from qpipe.workflow.entries import Entry, Reader, Status, date, short
from qpipe.workflow.segments import session


def _records(r: Reader) -> list:
    records = r.get("task.record") or []
    return [records] if isinstance(records, dict) else list(records)


def _record_name(record: Any) -> Any:
    """The class a record names (``qlib.workflow.record_temp.PortAnaRecord`` too)."""
    name = record.get("class") if isinstance(record, dict) else record
    return name.rpartition(".")[2] if isinstance(name, str) else name


def backtest_benchmark(r: Reader) -> tuple[str | None, str]:
    """The benchmark Qlib's backtest takes: PortAnaRecord's ``config.backtest.benchmark`` (the top-level
    ``benchmark`` of Qlib's files is an anchor of it, read by nothing), else the top-level key, qpipe's own reading
    for a workflow whose backtest names none; and the key it is under."""
    for i, record in enumerate(_records(r)):
        if isinstance(record, dict) and _record_name(record) == "PortAnaRecord":
            key = f"task.record[{i}].kwargs.config.backtest.benchmark"
            value = (((record.get("kwargs") or {}).get("config") or {}).get("backtest") or {}).get("benchmark")
            if isinstance(value, list | tuple | dict):
                raise ConfigError(f"{r.path}: {key} = {short(value)}: qpipe's benchmark is one instrument of the "
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


def _record_class(r: Reader, key: str, record: Any) -> str | None:
    """The record's class, refused (Qlib's getattr raises AttributeError) where Qlib's record module has none of that
    name or its ``module_path`` (or a dotted class) is a misspelt one; None for a record of another module (a user's
    own, which Qlib runs and qpipe cannot: not honoured; found in code review: it was refused)."""
    given = record.get("class") if isinstance(record, dict) else record
    if not isinstance(given, str):
        raise ConfigError(f"{r.path}: {key} = {short(record)}: expected {{class: SignalRecord, SigAnaRecord or "
                          "PortAnaRecord, kwargs: {...}}")
    module, _, name = given.rpartition(".")
    module = module or (record.get("module_path") if isinstance(record, dict) else None)
    where = f"{key}.module_path" if "." not in given else f"{key}.class"
    if module is not None and module != QLIB_RECORD_MODULE:
        if close_match(str(module), [QLIB_RECORD_MODULE]):
            raise ConfigError(f"{r.path}: {where} = {module!r}: no such module (Qlib: ModuleNotFoundError)"
                              f"{close_match(str(module), [QLIB_RECORD_MODULE])}")
        r.entries.append(Entry(key, given if "." in given else f"{module}.{name}", "not honoured",
                               f"a record of {module}: qpipe runs the records of Qlib's {QLIB_RECORD_MODULE} only"))
        return None
    known = (*RECORD_ARGUMENTS, *QLIB_ONLY_RECORDS)
    if name not in known:
        raise ConfigError(f"{r.path}: {key}.class = {given!r}: {QLIB_RECORD_MODULE} has no such record (Qlib: "
                          f"AttributeError){close_match(name, known)}; qpipe runs {', '.join(RECORD_ARGUMENTS)}")
    if isinstance(record, dict) and "module_path" in record:
        r.entries.append(Entry(f"{key}.module_path", module, "honoured", "Qlib's own class"))
    return name


def _record_arguments(r: Reader, key: str, name: str, kwargs: Any) -> None:
    """Each argument of the record: honoured, not honoured with the reason, or refused where Qlib's __init__ would
    raise (TypeError) with the closest valid name. PortAnaRecord's ``config`` is read by _port_analysis."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{r.path}: {key}.kwargs = {short(kwargs)}: expected a mapping of {name}'s arguments")
    valid = RECORD_ARGUMENTS[name]
    for argument, value in kwargs.items():
        if argument not in valid:
            raise ConfigError(f"{r.path}: {key}.kwargs.{argument} = {short(value)}: not an argument of Qlib's {name} "
                              f"(Qlib refuses it: TypeError){close_match(argument, valid)}; valid: {', '.join(valid)}")
        if argument != "config":
            r.entries.append(Entry(f"{key}.kwargs.{argument}", value,
                                   *_record_argument(r, f"{key}.kwargs.{argument}", argument, value)))


def _record_argument(r: Reader, key: str, argument: str, value: Any) -> tuple[Status, str]:
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


def _analysis_freq(r: Reader, key: str, value: Any) -> tuple[Status, str]:
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


def record_entries(r: Reader, exchange: dict, days: np.ndarray, test: tuple, benchmark: Any
                    ) -> tuple[list[str], dict | None]:
    """The records; ``test``: the test segment's first and last sessions."""
    names, port_analysis = [], None
    for i, record in enumerate(_records(r)):
        key = f"task.record[{i}]"
        name = _record_class(r, key, record)
        if name is None:
            continue
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


def _port_analysis(r: Reader, key: str, config: dict, exchange: dict, days: np.ndarray, test: tuple,
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
            same = value is None or session(days, date(value, f"{key}.backtest.{name}", r.path), start) == \
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


def _strategy_class(r: Reader, key: str, strategy: dict) -> None:
    name = strategy.get("class", "TopkDropoutStrategy")
    if name != "TopkDropoutStrategy":
        raise ConfigError(f"{r.path}: {key}.class = {name!r}: qpipe backtests only TopkDropoutStrategy (remove the "
                          "PortAnaRecord or use that strategy)")
    module = strategy.get("module_path")
    if module is not None:
        known = module in QLIB_STRATEGY_MODULES
        r.entries.append(Entry(f"{key}.module_path", module, "honoured" if known else "not honoured",
                               "Qlib's own class" if known else "qpipe has only Qlib's TopkDropoutStrategy"))


def _qlib_arguments(r: Reader, key: str, given: dict, settings: tuple[str, ...], not_implemented: dict[str, str],
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
