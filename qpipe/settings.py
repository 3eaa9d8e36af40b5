"""Paths and knobs from the environment (``QPIPE_*``), with defaults that work out of the box."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qpipe.cadence import parse_cadence


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
    # First trading-day partition; sources may start later, never earlier.
    partitions_start: str = field(default_factory=lambda: _env("QPIPE_PARTITIONS_START", "2010-01-04"))
    device: str = field(default_factory=lambda: _env("QPIPE_DEVICE", "auto"))
    # How often the daily schedule retrains checkpoints: daily, weekly, monthly or every N trading days.
    retrain_every: str | int = field(default_factory=lambda: parse_cadence(_env("QPIPE_RETRAIN_EVERY", "daily")))

    @property
    def market(self) -> str:
        """The universe models train and predict on (QPIPE_MARKET), by default the source's index."""
        default = {"synthetic": "syn200", "qlib": self.qlib_market}.get(self.source, "all")
        return _env("QPIPE_MARKET", default)

    @property
    def warehouse(self) -> Path:
        return Path(_env("QPIPE_WAREHOUSE", str(self.home / "warehouse.duckdb")))

    @property
    def checkpoints(self) -> Path:
        return Path(_env("QPIPE_CHECKPOINTS", str(self.home / "checkpoints")))


def get_settings() -> Settings:
    return Settings()
