"""Scores for a range of days, each day from the newest checkpoint trained at or before it."""

import bisect
from collections.abc import Callable, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from qpipe.data import warehouse as wh
from qpipe.features.handler import infer_frame
from qpipe.features.processors import ProcessorChain
from qpipe.data.validation import first_few
from qpipe.features.store import FEATURE_SETS, calendar, day_range
from qpipe.settings import LOAD_CELLS
from qpipe.training import dataset
from qpipe.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from qpipe.training.engine import predict

PREDICTIONS_DDL = ("date DATE NOT NULL, instrument VARCHAR NOT NULL, score FLOAT, model VARCHAR NOT NULL, "
                   "checkpoint_partition VARCHAR NOT NULL")


def infer_chain(checkpoint: Checkpoint) -> ProcessorChain:
    """The processors fitted at training time, as they process the rows a checkpoint scores."""
    return ProcessorChain.from_state(checkpoint.sidecar["processor_state"]["infer"])


def score_days(con: duckdb.DuckDBPyConnection, days: np.ndarray, checkpoint: Checkpoint, infer: ProcessorChain,
               first, last, market: str) -> pd.DataFrame:
    """date, instrument, score for the market members on [first, last], processed by ``infer``."""
    config = checkpoint.config
    rows = dataset.WindowRows(con, config.feature_set, dataset.history_start(days, first, config), last, known_by=first,
                              market=market)
    features = rows.features(con, dataset.read_columns(config.feature_set, infer))
    processed = infer_frame(infer, features)[checkpoint.columns]
    del features  # each copy of the block is let go as soon as the next exists
    instruments = processed.index.get_level_values("instrument").to_numpy()
    names = checkpoint.sidecar.get("concepts")
    concepts = None if names is None else dataset.concept_matrix(con, instruments, names)
    frame = dataset.to_frame(processed.to_numpy(), processed.index.get_level_values("datetime").to_numpy(), instruments,
                             checkpoint.columns, None, samples_from=first, concepts=concepts)
    del processed
    return pd.DataFrame({"date": frame.dates[frame.is_sample], "instrument": frame.instruments[frame.is_sample],
                         "score": predict(checkpoint.model, frame, config).astype(np.float32)})


def day_blocks(con: duckdb.DuckDBPyConnection, checkpoint: Checkpoint, infer: ProcessorChain,
               covered: list[np.datetime64], market: str, load_cells: int) -> list[list[np.datetime64]]:
    """``covered`` in runs of days whose scans hold at most about ``load_cells`` feature cells (at least a day each)."""
    config = checkpoint.config
    columns = len(dataset.read_columns(config.feature_set, infer))
    rows_a_day = dataset.scan_rows(con, config.feature_set, covered[0], covered[-1], market) / len(covered)
    per_block = max(1, int(load_cells // max(rows_a_day * columns, 1)))
    return [covered[k:k + per_block] for k in range(0, len(covered), per_block)]


NONE = ""  # the days before a store's first checkpoint (an ISO date sorts after it)


def write_predictions(con: duckdb.DuckDBPyConnection, store, arch: str, start, end, market: str,
                      load_cells: int = LOAD_CELLS, recorded: Sequence[str] = (),
                      only: Sequence[str] = (), warn: Callable[[str], None] = lambda _: None) -> tuple[int, dict[str, str]]:
    """Replace ``arch``'s scores on [start, end] in one transaction; returns (rows written, the sha256 of the weights
    of each checkpoint partition used).

    Each day is scored by the newest checkpoint at or before it in ``store`` (among ``only``, when given: a
    workflow's own). Where one of ``recorded`` (the partitions Dagster holds a materialization of) would be newer,
    its files are gone: refused, rather than scoring those days with an older model in silence. A checkpoint that
    records none of a network argument added to the code since its training is ``warn``-ed of (Checkpoint.assumed).

    Each checkpoint scores its days in blocks of at most about ``load_cells`` feature cells, streamed into one
    INSERT while the next block is scored (``wh.streamed_inserts``), so a backfill of years holds a block's
    features and scores at a time, not the range's. Non-finite scores fail the write, which then writes nothing."""
    days = calendar(con)
    lo, hi = day_range(days, start, end)
    available = store.partitions(arch)  # sorted ISO dates, listed once for the whole range
    if only:
        absent = sorted(set(only) - set(available))
        if absent:
            raise ValueError(f"{arch} checkpoint {absent[0]}, one of those named to score "
                             f"{pd.Timestamp(start).date()}..{pd.Timestamp(end).date()}, is not in "
                             f"{store.path_for(arch, '')}; nothing was written")
        available, recorded = sorted(only), [p for p in recorded if p in only]
    by_checkpoint: dict[str, list[np.datetime64]] = {}
    for day in days[lo:hi + 1]:
        newest = bisect.bisect_right(available, str(day)) - 1  # the newest checkpoint at or before the day
        by_checkpoint.setdefault(available[newest] if newest >= 0 else NONE, []).append(day)
    _refuse_lost_checkpoints(store, arch, sorted(recorded), by_checkpoint)
    dataset.check_members_reach(con, market, days[hi])
    if NONE in by_checkpoint:
        raise ValueError(f"no {arch} checkpoint at or before {by_checkpoint[NONE][0]}; materialize "
                         f"models/{arch}_checkpoint first")
    wh.ensure_table(con, wh.PREDICTIONS, PREDICTIONS_DDL)
    written, weights = 0, {}
    with wh.transaction(con), wh.cursor(con) as reader:
        con.execute(f"DELETE FROM {wh.PREDICTIONS} WHERE model = ? AND date BETWEEN ? AND ?",
                    [arch, pd.Timestamp(start).date(), pd.Timestamp(end).date()])
        with wh.streamed_inserts(con, in_transaction=True) as insert:
            for partition, covered in by_checkpoint.items():
                checkpoint = _load(store, arch, partition)
                warning = checkpoint.assumed_warning(arch, partition)
                if warning:
                    warn(warning)
                _refuse_days_without_features(reader, checkpoint.config.feature_set, covered)
                weights[partition] = checkpoint.sidecar["weights"]["sha256"]
                infer = infer_chain(checkpoint)
                for block in day_blocks(reader, checkpoint, infer, covered, market, load_cells):
                    scores = score_days(reader, days, checkpoint, infer, block[0], block[-1], market)
                    _refuse_non_finite(scores, arch, partition)
                    insert(wh.PREDICTIONS, pa.Table.from_pandas(scores.assign(model=arch, checkpoint_partition=partition),
                                                                preserve_index=False))
                    written += len(scores)
    return written, weights


def _load(store, arch: str, partition: str) -> Checkpoint:
    """The checkpoint, or its error with what to do about it."""
    try:
        return load_checkpoint(store.path_for(arch, partition))
    except CheckpointError as error:
        raise CheckpointError(f"{str(error).rstrip('.')}. Nothing was written. Train it again (dg launch --assets "
                              f"models/{arch}_checkpoint --partition {partition}), or restore its files from a copy") \
            from error


def days_scored_by(con: duckdb.DuckDBPyConnection, arch: str, partition: str) -> tuple[str, str] | None:
    """The first and last day of ``arch``'s stored scores made by its checkpoint ``partition``, if any."""
    if not wh.has_table(con, wh.PREDICTIONS):
        return None
    first, last = con.execute(f"SELECT min(date), max(date) FROM {wh.PREDICTIONS} WHERE model = ? AND "
                              "checkpoint_partition = ?", [arch, partition]).fetchone()
    return (str(first), str(last)) if first else None


def _refuse_days_without_features(con: duckdb.DuckDBPyConnection, feature_set: str, covered: list) -> None:
    """Days to score that have no features, named (torch's 'torch.cat(): expected a non-empty list' before)."""
    missing = wh.days_without_rows(con, FEATURE_SETS[feature_set].table, "date", covered)
    if missing:
        raise ValueError(f"features/{feature_set} has no rows of {len(missing)} of the sessions to score: "
                         f"{first_few(missing)}; materialize it for them first (dg launch --assets features/"
                         f"{feature_set} --partition-range {missing[0]}...{missing[-1]}); nothing was written")


def _refuse_lost_checkpoints(store, arch: str, recorded: list[str], by_checkpoint: dict[str, list]) -> None:
    for partition, covered in by_checkpoint.items():
        lost = [p for p in recorded[bisect.bisect_right(recorded, partition):] if p <= str(covered[-1])]
        if lost:
            days = f"{max(lost[0], str(covered[0]))}..{covered[-1]}"
            raise ValueError(
                f"models/{arch}_checkpoint {lost[-1]} is materialized in Dagster but its files are not in "
                f"{store.path_for(arch, '')} (deleted or moved?): "
                + (f"the scores of {days} would come from checkpoint {partition} instead" if partition != NONE else
                   f"no checkpoint is left to score {days}")
                + f". Nothing was written. Materialize it again (dg launch --assets models/{arch}_checkpoint "
                  f"--partition {lost[-1]}), or restore its files")


def _refuse_non_finite(scores: pd.DataFrame, arch: str, partition: str) -> None:
    broken = ~np.isfinite(scores["score"].to_numpy())
    if broken.any():
        first = scores[broken].iloc[0]
        raise ValueError(f"{arch} checkpoint {partition} gives {int(broken.sum())} non-finite scores (the first: "
                         f"{first['instrument']} on {pd.Timestamp(first['date']).date()}); nothing was written")
