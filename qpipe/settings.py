"""Paths and knobs from the environment (``QPIPE_*``), with defaults that work out of the box."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qpipe.cadence import parse_cadence
from qpipe.data.synthetic import ORIGIN as SYNTHETIC_ORIGIN, index_size_for
from qpipe.models.registry import ARCHITECTURES


def parse_models(text: str) -> tuple[str, ...]:
    """QPIPE_MODELS: a comma-separated list of architectures, or "all"."""
    if text.strip().lower() == "all":
        return ARCHITECTURES
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown or not names:
        raise ValueError(f"QPIPE_MODELS = {text!r}: unknown model {unknown[0] if unknown else '(none)'!r}; "
                         f"valid models: {', '.join(ARCHITECTURES)} (or all)")
    return names


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(_env("QPIPE_HOME", ".qpipe")).resolve())
    # Where prices come from: "synthetic" (the embedded default market), "tabular" (CSV/Parquet
    # file or folder at QPIPE_SOURCE_PATH) or "qlib" (a Qlib provider directory at QPIPE_SOURCE_PATH).
    source: str = field(default_factory=lambda: _env("QPIPE_SOURCE", "synthetic"))
    source_path: str = field(default_factory=lambda: _env("QPIPE_SOURCE_PATH", ""))
    # JSON object mapping source column names to qpipe names, e.g. {"Name": "instrument"}.
    source_columns: dict = field(default_factory=lambda: json.loads(_env("QPIPE_SOURCE_COLUMNS", "{}")))
    qlib_market: str = field(default_factory=lambda: _env("QPIPE_QLIB_MARKET", "all"))
    synthetic_seed: int = field(default_factory=lambda: int(_env("QPIPE_SYNTHETIC_SEED", "7")))
    synthetic_instruments: int = field(default_factory=lambda: int(_env("QPIPE_SYNTHETIC_INSTRUMENTS", "300")))
    # First trading-day partition; sources may start later, never earlier. The embedded market starts at its origin.
    partitions_start: str = field(default_factory=lambda: _env(
        "QPIPE_PARTITIONS_START", SYNTHETIC_ORIGIN if _env("QPIPE_SOURCE", "synthetic") == "synthetic" else "2010-01-04"))
    device: str = field(default_factory=lambda: _env("QPIPE_DEVICE", "auto"))
    # How often the daily schedule retrains checkpoints: daily, weekly, monthly or every N trading days.
    retrain_every: str | int = field(default_factory=lambda: parse_cadence(_env("QPIPE_RETRAIN_EVERY", "daily")))
    # The architectures the daily schedule trains, scores and reports (all by default).
    models: tuple[str, ...] = field(default_factory=lambda: parse_models(_env("QPIPE_MODELS", "all")))

    @property
    def market(self) -> str:
        """The universe models train and predict on (QPIPE_MARKET), by default the source's index."""
        default = {"synthetic": f"syn{index_size_for(self.synthetic_instruments)}", "qlib": self.qlib_market}.get(self.source, "all")
        return _env("QPIPE_MARKET", default)

    @property
    def warehouse(self) -> Path:
        return Path(_env("QPIPE_WAREHOUSE", str(self.home / "warehouse.duckdb")))

    @property
    def checkpoints(self) -> Path:
        return Path(_env("QPIPE_CHECKPOINTS", str(self.home / "checkpoints")))


def get_settings() -> Settings:
    return Settings()
