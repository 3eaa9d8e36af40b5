"""Paths and knobs from the environment (``QPIPE_*``), with defaults that work out of the box.

One pydantic model validates them all; a bad value fails with the variable's name and value.
Of qpipe, this module imports only the model registry's names and the training profiles' (neither reads the
settings), so any module may read the settings (cadence, calendar and partitions do).
"""

import difflib
import json
import os
import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qpipe.models.registry import ARCHITECTURES, DEFAULT_FEATURE_SET, ON_ALPHA158, model_parts
from qpipe.training_profiles import Profile

CADENCES = ("daily", "weekly", "monthly")
# Environment variable -> field. The field's default applies where the variable is unset.
VARIABLES = {
    "QPIPE_HOME": "home", "QPIPE_SOURCE": "source", "QPIPE_SOURCE_PATH": "source_path",
    "QPIPE_SOURCE_COLUMNS": "source_columns", "QPIPE_SOURCE_DATE_FORMAT": "source_date_format",
    "QPIPE_CONCEPTS": "concepts_path", "QPIPE_QLIB_MARKET": "qlib_market",
    "QPIPE_QLIB_INGEST": "qlib_ingest", "QPIPE_BENCHMARK": "benchmark", "QPIPE_CALENDAR": "calendar",
    "QPIPE_SYNTHETIC_SEED": "synthetic_seed", "QPIPE_SYNTHETIC_INSTRUMENTS": "synthetic_instruments",
    "QPIPE_PARTITIONS_START": "partitions_start", "QPIPE_DEVICE": "device", "QPIPE_RETRAIN_EVERY": "retrain_every",
    "QPIPE_MODELS": "models", "QPIPE_TRAINING": "training", "QPIPE_MARKET": "market_override",
    "QPIPE_WAREHOUSE": "warehouse_override",
    "QPIPE_CHECKPOINTS": "checkpoints_override", "QPIPE_BLOCK_CELLS": "block_cells",
    "QPIPE_LOAD_CELLS": "load_cells", "QPIPE_FRAME_CELLS": "frame_cells",
    "QPIPE_EXECUTOR": "executor", "QPIPE_CELERY_BROKER": "celery_broker", "QPIPE_FEATURE_DEVICE": "feature_device",
    "QPIPE_LAKE": "lake", "QPIPE_LAKE_DATA": "lake_data", "QPIPE_SUSPEND_IDLE": "suspend_idle",
    "QPIPE_FRESH_BY": "fresh_by", "QPIPE_FEATURE_SETS": "feature_sets",
}
READ_ELSEWHERE = ("QPIPE_THREADS",)  # (qpipe.compute: threads are a property of the process, not a setting)

# Price cells (trading days with their lookback x instruments) a feature step computes at once. Each
# costs ~3 KB of features while in flight, so ~1 GB a block: memory is set here, not by the universe.
BLOCK_CELLS = 300_000
# Feature cells (rows x columns) a checkpoint's data load, a prediction, a backtest or a prices ingest (64 cells a
# row there) holds at once: a block is ~200 MB of float32, held about three times while the processors run; the
# result is held beside it.
LOAD_CELLS = 50_000_000
# Feature cells of a checkpoint's training frames held in memory (2 GB of float32). Larger frames (5,000 instruments
# x 960 days of Alpha360: 1.7 billion cells) live in a memory-mapped file under QPIPE_HOME/scratch instead.
FRAME_CELLS = 500_000_000


def parse_cadence(text: str | int) -> str | int:
    """QPIPE_RETRAIN_EVERY: ``daily``, ``weekly``, ``monthly`` or a positive whole number of trading days."""
    value = str(text).strip().lower()
    if value in CADENCES:
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(f"QPIPE_RETRAIN_EVERY = {text!r}: expected one of {', '.join(CADENCES)} "
                     "or a positive number of trading days")


def parse_models(text: str | tuple) -> tuple[str, ...]:
    """QPIPE_MODELS: a comma-separated list of architectures ("all": every one) and variants, an architecture on
    another feature set than Alpha360 (``lstm_alpha158``: qpipe.models.registry.model_parts; ``all_alpha158``: those
    of every architecture Qlib runs on Alpha158, ``all_<set>`` on a set of QPIPE_FEATURE_SETS)."""
    if isinstance(text, tuple):
        text = ",".join(text)
    names: list[str] = []
    for name in (name.strip().lower() for name in text.split(",") if name.strip()):
        arch, feature_set = model_parts(name)
        every = ARCHITECTURES if name == "all" else tuple(f"{a}_{feature_set}" for a in ON_ALPHA158) if (
            arch == "all" and feature_set) else (name,)
        names.extend(each for each in every if each not in names)
    # (an empty feature set, lstm_, was a second LSTM on Alpha360: found in review)
    unknown = [name for name in names if model_parts(name)[0] not in ARCHITECTURES or name.endswith("_")]
    if unknown or not names:
        raise ValueError(f"QPIPE_MODELS = {text!r}: unknown model {unknown[0] if unknown else '(none)'!r}; "
                         f"valid models: {', '.join(ARCHITECTURES)} (or all), and an architecture on another feature "
                         "set, <architecture>_<feature set> (e.g. lstm_alpha158)")
    if any(model_parts(name) == ("all", DEFAULT_FEATURE_SET) for name in text.lower().replace(" ", "").split(",")):
        raise ValueError(f"QPIPE_MODELS = {text!r}: all_{DEFAULT_FEATURE_SET} is what the architectures train on "
                         "their own: name all")
    same = [name for name in names if model_parts(name)[1] == DEFAULT_FEATURE_SET]
    if same:
        raise ValueError(f"QPIPE_MODELS = {text!r}: {same[0]} is what {model_parts(same[0])[0]} trains on its own "
                         f"(its feature set {DEFAULT_FEATURE_SET}): name {model_parts(same[0])[0]}")
    return tuple(names)


def refuse_unknown_sets(models: tuple[str, ...], feature_sets: "Path | None", setting: str = "QPIPE_MODELS") -> None:
    """A variant's feature set must be Alpha158 or a set of the QPIPE_FEATURE_SETS file."""
    from qpipe.features.custom import read_feature_sets

    own = tuple(read_feature_sets(feature_sets or ""))
    for name in models:
        arch, feature_set = model_parts(name)
        if feature_set is not None and feature_set not in ("alpha158", *own):
            raise ValueError(f"{setting}: {name} is {arch} on the feature set {feature_set!r}, which is not alpha158"
                             + (f" nor a set of QPIPE_FEATURE_SETS ({feature_sets}: {', '.join(own)})" if feature_sets
                                else ", and QPIPE_FEATURE_SETS names no file of your own sets"))


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
FEATURE_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def parse_device(text: str) -> str:
    """QPIPE_DEVICE and a checkpoint's ``device``: auto, cpu, cuda, cuda:<index> or mps."""
    value = str(text).strip().lower()
    if not DEVICE.match(value):
        raise ValueError(f"expected auto, cpu, cuda, cuda:<index> or mps, not {text!r}")
    return value


def parse_feature_device(text: str) -> str:
    """QPIPE_FEATURE_DEVICE: auto (a GPU when one is visible, else the CPU), cpu, cuda or cuda:<index>.

    Not mps: the operators accumulate in float64, which Apple's GPUs do not have."""
    value = str(text).strip().lower()
    if not FEATURE_DEVICE.match(value):
        raise ValueError(f"QPIPE_FEATURE_DEVICE = {text!r}: expected auto, cpu, cuda or cuda:<index>")
    return value


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(default=Path(".qpipe"), validate_default=True)  # absolute: messages name the real folder
    # Where prices come from: "synthetic" (the embedded default market), "tabular" (CSV/Parquet
    # file or folder at QPIPE_SOURCE_PATH) or "qlib" (a Qlib provider directory at QPIPE_SOURCE_PATH).
    source: Literal["synthetic", "tabular", "qlib"] = "synthetic"
    source_path: str = ""
    # JSON object mapping source column names to qpipe names, e.g. {"Name": "instrument"}.
    source_columns: dict[str, str] = Field(default_factory=dict)
    # strptime format of a CSV/Parquet source's dates, e.g. "%m/%d/%Y"; empty: YYYY-MM-DD or YYYYMMDD.
    source_date_format: str = ""
    # A CSV/Parquet file of concept memberships (instrument, concept[, kind]) for HIST, in place of the source's own.
    concepts_path: str = ""
    qlib_market: str = "all"
    # A Qlib provider's instruments to ingest: "market" (those ever in QPIPE_QLIB_MARKET since the first
    # partition, plus the benchmark), or "all" (every folder of features/).
    qlib_ingest: Literal["market", "all"] = "market"
    # The benchmark index instrument of the source (Qlib's `benchmark`, e.g. SH000300), ingested with the market.
    benchmark: str = ""
    # Store the source's rows with prices and no volume as suspended days, as Qlib's data collector does (every run's
    # default of raw/prices' suspend_idle).
    suspend_idle: bool = False
    # "auto" (the source's own calendar) or an exchange code of exchange-calendars (qpipe.calendar).
    calendar: str = "auto"
    synthetic_seed: int = 7
    synthetic_instruments: int = Field(default=300, ge=3)
    # First trading-day partition; sources may start later, never earlier. Default: the embedded market's
    # origin for the embedded market, else 2010-01-04.
    partitions_start: str | None = None
    device: str = "auto"
    # How often the daily schedule retrains checkpoints: daily, weekly, monthly or every N trading days.
    retrain_every: str | int = "daily"
    # The architectures the daily schedule trains, scores and reports (all by default), and variants (parse_models).
    models: tuple[str, ...] = ARCHITECTURES
    # Hours after a session's close by which its partitions are due (qpipe.freshness): the daily run starts 90 min
    # after the close; raise it where retrains of the Qlib profile run longer (up to a week, for a weekend's retrain).
    fresh_by: float = Field(default=5, gt=0, le=168)
    # How much the daily schedule trains them (qpipe.training_profiles): "qlib", the checkpoint's defaults (Qlib's
    # benchmark settings), or "quick", the main job's profile, for a CPU machine.
    training: Profile = "qlib"
    block_cells: int = Field(default=BLOCK_CELLS, ge=1_000)
    load_cells: int = Field(default=LOAD_CELLS, ge=1_000)
    frame_cells: int = Field(default=FRAME_CELLS, ge=0)
    # Where feature operators run: the CPU's numba kernels, or torch on a GPU (auto: when one is visible).
    feature_device: str = "auto"
    # Where steps run: "multiprocess" (forked processes on this machine) or "celery" (workers of
    # qpipe.deploy.celery_app on the broker QPIPE_CELERY_BROKER, on this machine or others).
    executor: Literal["multiprocess", "celery"] = "multiprocess"
    celery_broker: str = "redis://127.0.0.1:6379/0"
    # The warehouse for workers that share no DuckDB file (qpipe.data.lake): a DuckLake whose catalog is
    # QPIPE_LAKE ("postgres:dbname=qpipe host=... user=...", or a local .ducklake file) and whose Parquet files
    # are under QPIPE_LAKE_DATA (a folder every worker mounts). Unset: the DuckDB file QPIPE_WAREHOUSE.
    lake: str = ""
    lake_data: str = ""
    # A YAML file of the user's own feature sets of Qlib expressions (qpipe.features.custom), beside Alpha158/360.
    feature_sets: Path | None = None
    market_override: str | None = None
    warehouse_override: Path | None = None
    checkpoints_override: Path | None = None

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        value = value.expanduser().resolve()
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a folder: the warehouse and checkpoints go in a folder")
        return value

    @field_validator("warehouse_override")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser().absolute()  # not resolved: DuckDB looks for the .wal beside the name given
        if value.is_dir():
            raise ValueError(f"{value} is a folder: QPIPE_WAREHOUSE names the DuckDB file itself (e.g. "
                             f"{value / 'warehouse.duckdb'})")
        return value

    @field_validator("feature_sets")
    @classmethod
    def _feature_sets(cls, value: Path | None) -> Path | None:
        """The file, read here so that a wrong set is one line wherever settings are checked, not a traceback."""
        from qpipe.features.custom import read_feature_sets

        if value is None:
            return None
        if not value.expanduser().is_file():
            raise ValueError(f"{value} is not a file: QPIPE_FEATURE_SETS names a YAML file of feature sets")
        value = value.expanduser().absolute()
        read_feature_sets(value)
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value):
        return parse_device(value)

    @field_validator("feature_device", mode="before")
    @classmethod
    def _feature_device(cls, value):
        return parse_feature_device(value)

    @field_validator("partitions_start", mode="before")
    @classmethod
    def _date(cls, value):
        try:
            return None if value is None else date.fromisoformat(str(value).strip()).isoformat()
        except ValueError:
            raise ValueError(f"QPIPE_PARTITIONS_START = {value!r}: expected a date, YYYY-MM-DD") from None

    @field_validator("retrain_every", mode="before")
    @classmethod
    def _cadence(cls, value):
        return parse_cadence(value)

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value):
        return parse_models(value)

    @field_validator("source_date_format")
    @classmethod
    def _date_format(cls, value: str) -> str:
        sample = date(2013, 12, 31)
        try:
            same = not value or datetime.strptime(sample.strftime(value), value).date() == sample
        except ValueError:
            same = False
        if not same:
            raise ValueError(f"QPIPE_SOURCE_DATE_FORMAT = {value!r}: not a strptime format of a whole date "
                             "(year, month and day), e.g. %m/%d/%Y or %d.%m.%Y")
        return value

    @field_validator("source_columns", mode="before")
    @classmethod
    def _columns_from_json(cls, value):
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"QPIPE_SOURCE_COLUMNS = {value!r} is not a JSON object: {error}") from None
        return value

    @model_validator(mode="after")
    def _variants_have_their_sets(self) -> "Settings":
        refuse_unknown_sets(self.variants, self.feature_sets)
        return self

    @property
    def variants(self) -> tuple[str, ...]:
        """The models of QPIPE_MODELS that are an architecture on another feature set (``lstm_alpha158``)."""
        return tuple(name for name in self.models if name not in ARCHITECTURES)

    @model_validator(mode="after")
    def _lake_has_data(self) -> "Settings":
        if self.lake and not self.lake_data:
            raise ValueError(f"QPIPE_LAKE = {self.lake!r} needs QPIPE_LAKE_DATA: the folder every worker "
                             "mounts, where the lake's Parquet files go")
        return self

    @property
    def first_partition(self) -> str:
        if self.partitions_start:
            return self.partitions_start
        from qpipe.data.synthetic import ORIGIN

        return ORIGIN if self.source == "synthetic" else "2010-01-04"

    @property
    def market(self) -> str:
        """The universe models train and predict on (QPIPE_MARKET), by default the source's index."""
        return self.market_override or self.source_markets[-1]

    @property
    def source_markets(self) -> tuple[str, ...]:
        """The markets raw/universe holds of the configured source: ``all``, and its index."""
        if self.source == "synthetic":
            from qpipe.data.synthetic import index_size_for

            return "all", f"syn{index_size_for(self.synthetic_instruments)}"
        return ("all", self.qlib_market) if self.source == "qlib" and self.qlib_market != "all" else ("all",)

    @property
    def warehouse(self) -> Path:
        return self.warehouse_override or self.home / "warehouse.duckdb"

    @property
    def checkpoints(self) -> Path:
        return self.checkpoints_override or self.home / "checkpoints"

    @property
    def scratch(self) -> Path:
        """Where training frames larger than ``frame_cells`` are memory-mapped (files unlinked as they are made)."""
        return self.home / "scratch"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        known = (*VARIABLES, *READ_ELSEWHERE)
        unknown = sorted(name for name in environ if name.startswith("QPIPE_") and name not in known)
        if unknown:  # a misspelt name would leave its setting at the default in silence (QPIPE_HOEM: another folder)
            close = difflib.get_close_matches(unknown[0], known, n=1)
            raise SettingsError(f"{unknown[0]} is not a qpipe setting"
                                + (f"; did you mean {close[0]}?" if close else "") + " (the README's table lists them)")
        values = {field: environ[name] for name, field in VARIABLES.items() if environ.get(name, "") != ""}
        try:
            return cls(**values)
        except ValidationError as error:
            problem = error.errors()[0]
            field = problem["loc"][0] if problem["loc"] else ""
            name = next((n for n, f in VARIABLES.items() if f == field), field)
            message = problem["msg"].removeprefix("Value error, ")
            if not message.startswith(name):
                message = f"{name} = {values.get(field)!r}: {message}"
            raise SettingsError(message) from None


def get_settings() -> Settings:
    return Settings.from_env()
