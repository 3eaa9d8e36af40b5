"""From the warehouse to the engine: a checkpoint's windows, its rows, its fitted processors.

A checkpoint for trading day D may only see labels known at D's close (``known_on <= D``): its
valid window ends at the last such label day, its train window precedes it. Rows are the
index members of ``market`` on each day, as Qlib's handler keeps only market members. The
processors are Qlib's benchmark ones, fitted on the train window only and saved with the
checkpoint, so predictions reproduce from the checkpoint alone.
"""

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from qpipe.data import warehouse as wh
from qpipe.features.alpha158 import FILTER_COL_20
from qpipe.features.label import LABEL_NAME
from qpipe.features.processors import ProcessorChain
from qpipe.features.store import FEATURE_SETS, LABEL_HORIZON, LABEL_TABLE, calendar
from qpipe.models.config import ModelConfig
from qpipe.training.frame import TrainingFrame


@dataclass(frozen=True)
class Windows:
    train: tuple[np.datetime64, np.datetime64]
    valid: tuple[np.datetime64, np.datetime64]

    def to_json(self) -> dict[str, list[str]]:
        return {"train": [str(d) for d in self.train], "valid": [str(d) for d in self.valid]}


def windows_as_of(days: np.ndarray, as_of, train_days: int, valid_days: int) -> Windows:
    """Train then valid, ending at the last day whose label is known at ``as_of``'s close."""
    last = int(np.searchsorted(days, np.datetime64(pd.Timestamp(as_of).date(), "D"), "right")) - 1 - LABEL_HORIZON
    first = last - valid_days - train_days + 1
    if first < 0:
        raise ValueError(f"{train_days} train + {valid_days} valid days of known labels need "
                         f"{train_days + valid_days + LABEL_HORIZON} trading days up to {as_of}; the warehouse has "
                         f"{max(last + LABEL_HORIZON + 1, 0)}")
    return Windows(train=(days[first], days[last - valid_days]), valid=(days[last - valid_days + 1], days[last]))


def feature_columns(config: ModelConfig) -> list[str]:
    """Alpha158 sequence models read Qlib's 20 FilterCol columns (the benchmark YAMLs); others all columns."""
    if config.feature_set == "alpha158" and config.step_len is not None:
        return list(FILTER_COL_20)
    return list(FEATURE_SETS[config.feature_set].columns)


def read_rows(con: duckdb.DuckDBPyConnection, config: ModelConfig, first, last, known_by, market: str) -> pd.DataFrame:
    """Market members' feature rows in [first, last] with the raw LABEL0 where known by ``known_by``."""
    columns = ", ".join(f'f."{c}"' for c in feature_columns(config))
    frame = con.execute(f"""
        SELECT f.date AS datetime, f.instrument, {columns}, l.{LABEL_NAME}
        FROM {FEATURE_SETS[config.feature_set].table} f
        JOIN {wh.UNIVERSE} u ON u.market = ? AND u.instrument = f.instrument
                             AND f.date BETWEEN u.start_date AND u.end_date
        LEFT JOIN {LABEL_TABLE} l ON l.date = f.date AND l.instrument = f.instrument AND l.known_on <= ?
        WHERE f.date BETWEEN ? AND ?
        ORDER BY f.date, f.instrument""",
        [market, pd.Timestamp(known_by).date(), pd.Timestamp(first).date(), pd.Timestamp(last).date()]).df()
    frame["datetime"] = frame["datetime"].astype("datetime64[ns]")
    return frame.set_index(["datetime", "instrument"])


def history_start(days: np.ndarray, first, config: ModelConfig) -> np.datetime64:
    """Where to start reading so a sequence model's first sample has its step_len rows of history."""
    i = int(np.searchsorted(days, np.datetime64(pd.Timestamp(first).date(), "D")))
    return days[max(0, i - (config.step_len or 1) + 1)]


def benchmark_processors(windows: Windows) -> tuple[ProcessorChain, ProcessorChain]:
    """Qlib's benchmark processors: infer RobustZScoreNorm(clip) + Fillna; learn CSRankNorm(label)."""
    fit = {"fit_start_time": str(windows.train[0]), "fit_end_time": str(windows.train[1])}
    infer = ProcessorChain.from_config([
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
    ], **fit)
    learn = ProcessorChain.from_config([{"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}], **fit)
    return infer, learn


def to_frame(rows: pd.DataFrame, columns: list[str], samples_from) -> TrainingFrame:
    """A TrainingFrame whose samples are the rows dated ``samples_from`` or later (earlier rows are history)."""
    dates = rows.index.get_level_values("datetime").to_numpy().astype("datetime64[D]")
    return TrainingFrame(
        features=np.ascontiguousarray(rows[columns].to_numpy(dtype=np.float32)),
        label=rows[LABEL_NAME].to_numpy(dtype=np.float32),
        dates=dates,
        instruments=rows.index.get_level_values("instrument").to_numpy().astype(str),
        columns=columns,
        is_sample=dates >= np.datetime64(pd.Timestamp(samples_from).date(), "D"),
    )


@dataclass(frozen=True)
class TrainingData:
    """Everything a checkpoint is trained from, and the fitted processors it is saved with."""

    windows: Windows
    train: TrainingFrame
    valid: TrainingFrame
    infer: ProcessorChain
    learn: ProcessorChain
    columns: list[str]


def load_training_data(con: duckdb.DuckDBPyConnection, config: ModelConfig, as_of, train_days: int,
                       valid_days: int, market: str) -> TrainingData:
    """The train and valid frames of a checkpoint for ``as_of``: read, processed, split."""
    days = calendar(con)
    windows = windows_as_of(days, as_of, train_days, valid_days)
    rows = read_rows(con, config, history_start(days, windows.train[0], config), windows.valid[1],
                     known_by=as_of, market=market)
    infer, learn = benchmark_processors(windows)
    processed = learn(infer.fit_transform(rows))
    columns = feature_columns(config)
    dates = processed.index.get_level_values("datetime").to_numpy().astype("datetime64[D]")
    train_rows = processed[dates <= windows.train[1]]
    valid_rows = processed[dates >= history_start(days, windows.valid[0], config)]
    return TrainingData(windows=windows, infer=infer, learn=learn, columns=columns,
                        train=to_frame(train_rows, columns, samples_from=windows.train[0]),
                        valid=to_frame(valid_rows, columns, samples_from=windows.valid[0]))

