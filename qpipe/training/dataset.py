"""From the warehouse to the engine: a checkpoint's windows, its rows, its fitted processors.

A checkpoint for trading day D may only see labels known at D's close (``known_on <= D``): its
valid window ends at the last such label day, its train window precedes it. Rows are the
index members of ``market`` on each day, as Qlib's handler keeps only market members. The
processors (Qlib's benchmark ones unless the config names others: qpipe.features.handler) are
fitted on the train window only and saved with the checkpoint, so predictions reproduce from the
checkpoint alone.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from qpipe.data import warehouse as wh
from qpipe.features import handler
from qpipe.features.handler import Processing, benchmark_processing, handler_processing, learn_frame
from qpipe.features.label import LABEL_NAME
from qpipe.features.processors import ProcessorChain
from qpipe.features.store import FEATURE_SETS, LABEL_HORIZON, LABEL_TABLE, calendar, day_range
from qpipe.models.config import ModelConfig
from qpipe.models.registry import get_spec
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


def default_processing(config: ModelConfig) -> Processing:
    """The processors of the config's Qlib benchmark workflow: its preset's own chains where it has them (MLP on
    Alpha158), else the benchmark chains (with the 20 FilterCol columns for Alpha158 sequence models)."""
    preset = get_spec(config.model).presets.get(config.feature_set)
    if preset is not None and preset.handler is not None:
        return handler_processing(config.feature_set, dict(preset.handler), f"{config.model}/{config.feature_set}")
    return benchmark_processing(config.feature_set, config.step_len)


def read_columns(feature_set: str, infer: ProcessorChain, learn: ProcessorChain | None = None,
                 process_type: str = "append") -> list[str]:
    """The feature set's columns the chains read (handler.read_columns; ``learn`` None: a prediction's)."""
    return handler.read_columns(list(FEATURE_SETS[feature_set].columns), infer, learn, process_type)


def check_market(con: duckdb.DuckDBPyConnection, market: str) -> None:
    """A universe that raw/universe does not hold is named, with those it does (else no rows, and a
    processor's "no rows in the fit window" would be the first word of it)."""
    known = [m for (m,) in con.execute(f"SELECT DISTINCT market FROM {wh.UNIVERSE} ORDER BY 1").fetchall()]
    if market not in known:
        raise ValueError(f"market {market!r} is not in raw.universe (it holds {', '.join(known) or 'nothing yet'}): "
                         "set QPIPE_MARKET or the checkpoint's market to one of them, or materialize raw/universe")


READ_DAYS = 60  # trading days read from DuckDB at a time: the Arrow rows of a whole window never exist at once


def read_rows(con: duckdb.DuckDBPyConnection, feature_set: str, columns: list[str], first, last, known_by,
              market: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Market members' ``columns`` of ``feature_set`` in [first, last], and their raw LABEL0 where known by ``known_by``.

    Both frames are indexed by (datetime, instrument), sorted. The features come back as one
    column-major float32 block, so the processors work on contiguous memory, without the copies
    pandas makes of frames with hundreds of separate columns; it is filled ``READ_DAYS`` days at a time.
    """
    check_market(con, market)
    selected = ", ".join(f'f."{c}"' for c in columns)
    rows_sql = f"""
        FROM {FEATURE_SETS[feature_set].table} f
        JOIN {wh.UNIVERSE} u ON u.market = $market AND u.instrument = f.instrument
                             AND f.date BETWEEN u.start_date AND u.end_date
        LEFT JOIN {LABEL_TABLE} l ON l.date = f.date AND l.instrument = f.instrument AND l.known_on <= $known_by
        WHERE f.date BETWEEN $first AND $last"""
    params = {"market": market, "known_by": pd.Timestamp(known_by).date()}
    days = calendar(con)
    lo, hi = day_range(days, first, last)
    days = days[lo:hi + 1]
    n_rows = con.sql(f"SELECT count(*) {rows_sql}", params={**params, "first": pd.Timestamp(first).date(),
                                                            "last": pd.Timestamp(last).date()}).fetchall()[0][0]
    values = np.empty((n_rows, len(columns)), dtype=np.float32, order="F")
    dates, instruments = np.empty(n_rows, dtype="datetime64[ns]"), np.empty(n_rows, dtype=object)
    label = np.empty(n_rows, dtype=np.float32)
    done = 0
    for block in range(0, len(days), READ_DAYS):  # blocks in date order: each sorted, so all are
        block_days = days[block:block + READ_DAYS]
        # No ORDER BY: sorting 360-column rows costs DuckDB more than sorting the keys here.
        table = con.sql(f"SELECT f.date AS datetime, f.instrument, {selected}, l.{LABEL_NAME} {rows_sql}",
                        params={**params, "first": block_days[0].item(), "last": block_days[-1].item()}
                        ).to_arrow_table()
        rows = slice(done, done + table.num_rows)
        block_dates = table.column("datetime").to_numpy().astype("datetime64[ns]")
        block_instruments = table.column("instrument").to_numpy(zero_copy_only=False)
        order = np.lexsort((block_instruments, block_dates))
        dates[rows], instruments[rows] = block_dates[order], block_instruments[order]
        label[rows] = table.column(LABEL_NAME).to_numpy(zero_copy_only=False).astype(np.float32)[order]
        _fill_column_major(values[rows], table, columns, order)
        done += table.num_rows
    if done != n_rows:
        raise RuntimeError(f"{FEATURE_SETS[feature_set].table} changed while it was read ({done} rows, then {n_rows})")
    index = pd.MultiIndex.from_arrays([dates, instruments], names=["datetime", "instrument"])
    return (pd.DataFrame(values, index=index, columns=columns, copy=False),
            pd.DataFrame({LABEL_NAME: label}, index=index))


def _fill_column_major(values: np.ndarray, table: pa.Table, columns: list[str], order: np.ndarray) -> None:
    """``values`` (a column-major float32 [rows, columns] view) = the table's columns, rows taken in ``order``.

    Filled by a few threads (numpy releases the GIL): most of the time goes into the first touch
    of the freshly allocated pages.
    """
    def fill(positions: np.ndarray) -> None:
        for j in positions:
            np.take(table.column(columns[j]).to_numpy(), order, out=values[:, j])

    threads = max(1, min(os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, np.array_split(np.arange(len(columns)), threads)))


def history_start(days: np.ndarray, first, config: ModelConfig) -> np.datetime64:
    """Where to start reading so a sequence model's first sample has its step_len rows of history."""
    i = int(np.searchsorted(days, np.datetime64(pd.Timestamp(first).date(), "D")))
    return days[max(0, i - (config.step_len or 1) + 1)]


def concept_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every sector and concept in raw/concepts, sorted: the columns of the stock-to-concept matrix."""
    return [name for (name,) in con.execute(f"SELECT DISTINCT concept FROM {wh.CONCEPTS} ORDER BY 1").fetchall()]


def concept_rows(con: duckdb.DuckDBPyConnection, instruments: np.ndarray, names: list[str]) -> np.ndarray:
    """float32 [rows, len(names)]: 1 where the row's instrument belongs to the concept (sectors included).

    A stock without concepts gets a zero row; a concept not in ``names`` (new since training) is left out.
    """
    pairs = con.execute(f"SELECT DISTINCT instrument, concept FROM {wh.CONCEPTS}").fetchall()
    column = {name: k for k, name in enumerate(names)}
    stocks, row_stock = np.unique(np.asarray(instruments, dtype=str), return_inverse=True)
    membership = np.zeros((len(stocks), len(names)), dtype=np.float32)
    for instrument, concept in pairs:
        i = int(np.searchsorted(stocks, instrument))
        if concept in column and i < len(stocks) and stocks[i] == instrument:
            membership[i, column[concept]] = 1.0
    return membership[row_stock]


def to_frame(features: pd.DataFrame, label: np.ndarray | None, samples_from,
             concepts: np.ndarray | None = None) -> TrainingFrame:
    """A TrainingFrame whose samples are the rows dated ``samples_from`` or later (earlier rows are history)."""
    dates = features.index.get_level_values("datetime").to_numpy().astype("datetime64[D]")
    return TrainingFrame(
        features=np.ascontiguousarray(features.to_numpy(), dtype=np.float32),
        label=np.full(len(dates), np.nan, dtype=np.float32) if label is None else label.astype(np.float32),
        dates=dates,
        instruments=features.index.get_level_values("instrument").to_numpy().astype(str),
        columns=list(features.columns),
        is_sample=dates >= np.datetime64(pd.Timestamp(samples_from).date(), "D"),
        concepts=concepts,
    )


@dataclass(frozen=True)
class TrainingData:
    """Everything a checkpoint is trained from, and the fitted processors it is saved with."""

    windows: Windows
    train: TrainingFrame
    valid: TrainingFrame
    infer: ProcessorChain
    learn: ProcessorChain
    process_type: str
    concepts: list[str] | None  # the concept matrix's columns, for models that read it


def shuffle_labels_within_days(label: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The placebo control: each day's labels permuted among that day's instruments."""
    dates = label.index.get_level_values("datetime").to_numpy()
    if (dates[1:] < dates[:-1]).any():
        raise ValueError("rows must be sorted by date to shuffle labels within days")
    order = np.lexsort((np.random.default_rng(seed).random(len(label)), dates))  # each day's rows, in random order
    return label.assign(**{LABEL_NAME: label[LABEL_NAME].to_numpy()[order]})


def load_training_data(con: duckdb.DuckDBPyConnection, config: ModelConfig, as_of, train_days: int,
                       valid_days: int, market: str, shuffle_labels: bool = False,
                       processing: Processing | None = None) -> TrainingData:
    """The train and valid frames of a checkpoint for ``as_of``: read, processed (``processing``, by default the
    config's benchmark workflow's: ``default_processing``), split.

    ``shuffle_labels`` permutes the labels within each day (seeded by the config's seed): a model
    trained so must show no out-of-sample skill, which is how alignment bugs are caught.
    """
    days = calendar(con)
    windows = windows_as_of(days, as_of, train_days, valid_days)
    processing = processing or default_processing(config)
    infer, learn = processing.chains(*windows.train)
    features, label = read_rows(con, config.feature_set,
                                read_columns(config.feature_set, infer, learn, processing.process_type),
                                history_start(days, windows.train[0], config), windows.valid[1], known_by=as_of,
                                market=market)
    if shuffle_labels:
        label = shuffle_labels_within_days(label, config.params["seed"] or 0)
    features, target = learn_frame(features, label, infer, learn, processing.process_type)
    target = target.to_numpy()
    dates = features.index.get_level_values("datetime").to_numpy().astype("datetime64[D]")  # sorted
    train_end = int(np.searchsorted(dates, windows.train[1], "right"))
    valid_start = int(np.searchsorted(dates, history_start(days, windows.valid[0], config)))
    names = matrix = None
    if get_spec(config.model).reads_concepts:
        names = concept_names(con)
        matrix = concept_rows(con, features.index.get_level_values("instrument").to_numpy(), names)
    return TrainingData(
        windows=windows, infer=infer, learn=learn, process_type=processing.process_type, concepts=names,
        train=to_frame(features.iloc[:train_end], target[:train_end], samples_from=windows.train[0],
                       concepts=None if matrix is None else matrix[:train_end]),
        valid=to_frame(features.iloc[valid_start:], target[valid_start:], samples_from=windows.valid[0],
                       concepts=None if matrix is None else matrix[valid_start:]))
