"""From the warehouse to the engine: a checkpoint's windows, its rows, its fitted processors.

A checkpoint for trading day D may only see labels known at D's close (``known_on <= D``): its
valid window ends at the last such label day, its train window precedes it. Rows are the
index members of ``market`` on each day, as Qlib's handler keeps only market members. The
processors (Qlib's benchmark ones unless the config names others: qpipe.features.handler) are
fitted on the train window only and saved with the checkpoint, so predictions reproduce from the
checkpoint alone.
"""

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from qpipe.data import warehouse as wh
from qpipe.features import handler
from qpipe.features.handler import Processing, benchmark_processing, handler_processing, learn_frame
from qpipe.features.label import LABEL_NAME
from qpipe.features.processors import ProcessorChain
from qpipe.features.store import FEATURE_SETS, LABEL_HORIZON, LABEL_TABLE, calendar
from qpipe.models.config import ModelConfig
from qpipe.models.registry import get_spec
from qpipe.settings import FRAME_CELLS, LOAD_CELLS
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


def check_members_reach(con: duckdb.DuckDBPyConnection, market: str, last) -> None:
    """Members of ``market`` known up to ``last``: raw/universe ingested before the prices of the last days holds
    spans that end before them, and those days would have no one to score."""
    check_market(con, market)
    (known_to,) = con.execute(f"SELECT max(end_date) FROM {wh.UNIVERSE} WHERE market = ?", [market]).fetchall()[0]
    last = pd.Timestamp(last).date()
    if known_to < last:
        raise ValueError(f"the members of market {market!r} in raw.universe end on {known_to}, before {last}: "
                         "raw/universe was materialized before the prices of the days after; materialize it again "
                         "(dg launch --assets raw/universe), then this")


def _member_rows(feature_set: str) -> str:
    """The FROM ... WHERE of ``feature_set``'s rows of market members on [$first, $last], with the known label."""
    return f"""
        FROM {FEATURE_SETS[feature_set].table} f
        JOIN {wh.UNIVERSE} u ON u.market = $market AND u.instrument = f.instrument
                             AND f.date BETWEEN u.start_date AND u.end_date
        LEFT JOIN {LABEL_TABLE} l ON l.date = f.date AND l.instrument = f.instrument AND l.known_on <= $known_by
        WHERE f.date BETWEEN $first AND $last"""


def _market_scan(feature_set: str) -> str:
    """The FROM ... WHERE a block of columns scans: the rows on [$first, $last] of the market's instruments."""
    return (f"FROM {FEATURE_SETS[feature_set].table} WHERE date BETWEEN $first AND $last AND instrument IN "
            f"(SELECT instrument FROM {wh.UNIVERSE} WHERE market = $market)")


def scan_rows(con: duckdb.DuckDBPyConnection, feature_set: str, first, last, market: str) -> int:
    """How many rows a block of columns of [first, last] scans (``WindowRows.features``): what sizes a block."""
    return con.sql(f"SELECT count(*) {_market_scan(feature_set)}",
                   params={"first": pd.Timestamp(first).date(), "last": pd.Timestamp(last).date(), "market": market}
                   ).fetchall()[0][0]


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


def concept_matrix(con: duckdb.DuckDBPyConnection, instruments: np.ndarray,
                   names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(membership, row): float32 [stocks, len(names)], 1 where the stock belongs to the concept (sectors
    included), and each of ``instruments``' row in it (int32). A row per stock, not per training row: 5,000
    stocks in 300 concepts are 6 MB, where a row per training row of 5,000 x 1,000 days would be 6 GB.

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
    return membership, row_stock.astype(np.int32)


def to_frame(features: np.ndarray, dates: np.ndarray, instruments: np.ndarray, columns: list[str],
             label: np.ndarray | None, samples_from,
             concepts: tuple[np.ndarray, np.ndarray] | None = None) -> TrainingFrame:
    """A TrainingFrame whose samples are the rows dated ``samples_from`` or later (earlier rows are history);
    ``concepts`` as ``concept_matrix`` gives them."""
    dates = dates.astype("datetime64[D]")
    return TrainingFrame(
        features=np.ascontiguousarray(features, dtype=np.float32),
        label=np.full(len(dates), np.nan, dtype=np.float32) if label is None else label.astype(np.float32, copy=False),
        dates=dates,
        instruments=instruments.astype(str),
        columns=list(columns),
        is_sample=dates >= np.datetime64(pd.Timestamp(samples_from).date(), "D"),
        concepts=None if concepts is None else concepts[0],
        concept_row=None if concepts is None else concepts[1],
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

    @property
    def frames_gb(self) -> float:
        return (self.train.features.nbytes + self.valid.features.nbytes) / 1e9

    @property
    def mapped(self) -> bool:
        """Whether the rows live in a memory-mapped scratch file (``frame_values``) rather than in memory."""
        return isinstance(self.train.features.base, np.memmap)

    def describe_frames(self) -> str:
        return f"frames {self.frames_gb:.2f} GB {'memory-mapped (QPIPE_FRAME_CELLS)' if self.mapped else 'in memory'}"


def shuffle_labels_within_days(label: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The placebo control: each day's labels permuted among that day's instruments."""
    dates = label.index.get_level_values("datetime").to_numpy()
    if (dates[1:] < dates[:-1]).any():
        raise ValueError("rows must be sorted by date to shuffle labels within days")
    order = np.lexsort((np.random.default_rng(seed).random(len(label)), dates))  # each day's rows, in random order
    return label.assign(**{LABEL_NAME: label[LABEL_NAME].to_numpy()[order]})


class WindowRows:
    """A window's member rows, read once: their (date, instrument) keys sorted, their raw label, and where each
    lies in the feature table's storage order. A block of columns is then a plain scan of the window (no join,
    no sort) put in order by one take: what a block costs beyond its own values does not grow with the blocks.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, feature_set: str, first, last, known_by, market: str):
        check_market(con, market)
        self.params = {"first": pd.Timestamp(first).date(), "last": pd.Timestamp(last).date(), "market": market}
        keys = con.sql(f"SELECT f.rowid AS row_id, f.date AS datetime, f.instrument, l.{LABEL_NAME} "
                       f"{_member_rows(feature_set)}", params={**self.params, "known_by": pd.Timestamp(known_by).date()}
                       ).to_arrow_table()
        self.scan_sql = _market_scan(feature_set)  # read in storage order
        self.scan_rows = scan_rows(con, feature_set, first, last, market)
        keys = keys.take(pc.sort_indices(keys, [("datetime", "ascending"), ("instrument", "ascending")]))
        self.row_ids = keys.column("row_id").to_numpy()
        self.index = pd.MultiIndex.from_arrays(
            [keys.column("datetime").to_numpy().astype("datetime64[ns]"),
             keys.column("instrument").to_numpy(zero_copy_only=False)], names=["datetime", "instrument"])
        self.label = pd.DataFrame({LABEL_NAME: keys.column(LABEL_NAME).to_numpy(zero_copy_only=False)
                                   .astype(np.float32)}, index=self.index)
        self._scanned: np.ndarray | None = None  # the row ids of the last scan, in storage order
        self._take: np.ndarray | None = None  # the positions in it of ``row_ids``

    def __len__(self) -> int:
        return len(self.row_ids)

    def features(self, con: duckdb.DuckDBPyConnection, columns: list[str]) -> pd.DataFrame:
        """``columns`` of the rows, sorted, as one column-major float32 block: the processors work on contiguous
        memory, without the copies pandas makes of frames with hundreds of separate columns."""
        selected = "".join(f', "{c}"' for c in columns)
        scan = con.sql(f"SELECT rowid AS row_id{selected} {self.scan_sql}", params=self.params).to_arrow_table()
        scanned = scan.column("row_id").to_numpy()
        if self._scanned is None or not np.array_equal(scanned, self._scanned):  # the first scan (or another order)
            sorter = np.argsort(scanned, kind="stable")
            self._scanned, self._take = scanned, sorter[np.searchsorted(scanned, self.row_ids, sorter=sorter)]
        values = np.empty((len(self), len(columns)), dtype=np.float32, order="F")
        _fill_column_major(values, scan, columns, self._take)
        return pd.DataFrame(values, index=self.index, columns=columns, copy=False)


@dataclass(frozen=True)
class LearnedRows:
    """DK_L: the processed features and label of a checkpoint's rows, and the chains fitted to them."""

    values: np.ndarray  # float32 [rows, columns], row-major as the engine reads it
    columns: list[str]
    label: np.ndarray  # [rows]
    dates: np.ndarray  # datetime64[D] [rows], sorted
    instruments: np.ndarray  # [rows]
    infer: ProcessorChain
    learn: ProcessorChain


def frame_values(rows: int, columns: int, frame_cells: int = FRAME_CELLS, scratch: str | Path = "") -> np.ndarray:
    """An empty float32 [rows, columns] array that a load fills block of columns by block: in memory up to
    ``frame_cells`` cells, else column-major and mapped from a file in ``scratch`` (``_mapped``).

    Column-major, each block is one contiguous stretch of the file. Stripes of a row-major mapping dirty every page
    of the file once per block, and the kernel writes them back again and again: a 5,000-instrument load took 124 s
    so and 48 s in memory. ``row_major`` then copies the filled array into the layout the engine reads.
    """
    if rows * columns <= frame_cells:
        return np.empty((rows, columns), dtype=np.float32)
    return _mapped((rows, columns), scratch, order="F")


def row_major(values: np.ndarray, scratch: str | Path = "") -> np.ndarray:
    """``values`` if it is row-major; else its copy into a row-major mapped array, a run of rows at a time: read
    column by column into memory, turned there, written as one stretch (both files read and written in order)."""
    if values.flags.c_contiguous:
        return values
    out = _mapped(values.shape, scratch)
    step = max(1, LOAD_CELLS // 4 // max(values.shape[1], 1))  # runs of about 50 MB
    for start in range(0, len(values), step):
        run = slice(start, start + step)
        out[run] = np.array(values[run], order="F")
    return out


def _mapped(shape: tuple[int, int], scratch: str | Path, order: str = "C") -> np.ndarray:
    """A float32 array mapped from a file in ``scratch`` (the system's temporary folder if empty), unlinked as it is
    made: the kernel keeps as much of it in memory as there is room for and writes the rest out, and the file goes
    when the array does (a killed step leaves none). A data-parallel rank reads its frames the same way (``handoff``).
    """
    folder = Path(scratch or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    size = shape[0] * shape[1] * 4
    with tempfile.TemporaryFile(dir=folder, prefix="qpipe-frames-") as file:  # the mapping keeps it while it lives
        try:  # reserved now: a write to a mapped page the disk has no room for would kill the step (SIGBUS)
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as error:
            raise OSError(error.errno, f"a checkpoint's training frames need {size / 1e6:,.1f} MB in {folder} "
                          f"({error.strerror}): free room there, point QPIPE_HOME at a larger disk, or raise "
                          "QPIPE_FRAME_CELLS to hold them in memory") from error
        return np.memmap(file, dtype=np.float32, mode="r+", shape=shape, order=order)


def learned_rows(con: duckdb.DuckDBPyConnection, feature_set: str, processing: Processing, windows: Windows, first,
                 as_of, market: str, shuffle_seed: int | None, load_cells: int, frame_cells: int = FRAME_CELLS,
                 scratch: str | Path = "") -> LearnedRows:
    """DK_L of [first, the valid window's end], read and processed at most ``load_cells`` feature cells at a time,
    into an array held in memory up to ``frame_cells`` cells and memory-mapped from ``scratch`` above
    (``frame_values``).

    Every processor but a features' DropnaProcessor treats each column on its own (handler.column_separable),
    so the chains are fitted and applied to blocks of columns, each read with all its rows (``WindowRows``), and
    the fitted blocks joined: the same values and statistics as one block (test_blocks.py), while the memory
    beside the result is one block's, however large the universe. A chain that looks across columns gets one block.
    """
    infer, learn = processing.chains(*windows.train)
    columns = read_columns(feature_set, infer, learn, processing.process_type)
    trained = processing.trained_columns(columns)
    rows = WindowRows(con, feature_set, first, windows.valid[1], as_of, market)
    label = rows.label if shuffle_seed is None else shuffle_labels_within_days(rows.label, shuffle_seed)
    per_block = max(1, load_cells // max(rows.scan_rows, 1) if handler.column_separable(infer, learn) else len(columns))
    position = {name: k for k, name in enumerate(trained)}
    fitted: list[tuple[ProcessorChain, ProcessorChain]] = []
    values = target = index = None
    labels: dict = {}  # the label-group processors' outputs, computed by the first block for all
    for start in range(0, max(len(columns), 1), per_block):
        infer, learn = processing.chains(*windows.train)
        features, block_target = learn_frame(rows.features(con, columns[start:start + per_block]), label, infer,
                                             learn, processing.process_type, labels)
        if values is None:
            values = frame_values(len(features), len(trained), frame_cells, scratch)
            target, index = block_target.to_numpy(), features.index
        elif len(features) != len(values) or not np.array_equal(block_target.to_numpy(), target, equal_nan=True):
            raise RuntimeError(f"the processors kept other rows or labels for columns {columns[start]!r}... than for "
                               f"{columns[0]!r}...: they must treat each column on its own to run in blocks")
        targets = [position[c] for c in features.columns]
        if targets and targets == list(range(targets[0], targets[-1] + 1)):
            values[:, targets[0]:targets[-1] + 1] = features.to_numpy()  # a slice: numpy's fancy-index write is slow
        else:
            values[:, targets] = features.to_numpy()
        fitted.append((infer, learn))
        del features
    return LearnedRows(values=row_major(values, scratch), columns=trained, label=target,
                       dates=index.get_level_values("datetime").to_numpy().astype("datetime64[D]"),
                       instruments=index.get_level_values("instrument").to_numpy(),
                       infer=handler.joined([i for i, _ in fitted]), learn=handler.joined([l for _, l in fitted]))


def load_training_data(con: duckdb.DuckDBPyConnection, config: ModelConfig, as_of, train_days: int,
                       valid_days: int, market: str, shuffle_labels: bool = False,
                       processing: Processing | None = None, load_cells: int = LOAD_CELLS,
                       frame_cells: int = FRAME_CELLS, scratch: str | Path = "") -> TrainingData:
    """The train and valid frames of a checkpoint for ``as_of``: read, processed (``processing``, by default the
    config's benchmark workflow's: ``default_processing``), split; ``load_cells`` feature cells at a time, into
    frames memory-mapped from ``scratch`` when they hold more than ``frame_cells`` cells (``learned_rows``).

    ``shuffle_labels`` permutes the labels within each day (seeded by the config's seed): a model
    trained so must show no out-of-sample skill, which is how alignment bugs are caught.
    """
    days = calendar(con)
    windows = windows_as_of(days, as_of, train_days, valid_days)
    processing = processing or default_processing(config)
    with wh.transaction(con):  # one snapshot: every block reads the same rows
        rows = learned_rows(con, config.feature_set, processing, windows, history_start(days, windows.train[0], config),
                            as_of, market, (config.params["seed"] or 0) if shuffle_labels else None, load_cells,
                            frame_cells, scratch)
    train_end = int(np.searchsorted(rows.dates, windows.train[1], "right"))
    valid_start = int(np.searchsorted(rows.dates, history_start(days, windows.valid[0], config)))
    names = concepts = None
    if get_spec(config.model).reads_concepts:
        names = concept_names(con)
        concepts = concept_matrix(con, rows.instruments, names)

    def frame(part: slice, samples_from) -> TrainingFrame:
        return to_frame(rows.values[part], rows.dates[part], rows.instruments[part], rows.columns, rows.label[part],
                        samples_from, None if concepts is None else (concepts[0], concepts[1][part]))

    return TrainingData(windows=windows, infer=rows.infer, learn=rows.learn, process_type=processing.process_type,
                        concepts=names, train=frame(slice(None, train_end), windows.train[0]),
                        valid=frame(slice(valid_start, None), windows.valid[0]))
