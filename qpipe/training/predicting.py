"""Scores for a range of days, each day from the newest checkpoint trained at or before it."""

import duckdb
import numpy as np
import pandas as pd

from qpipe.data import warehouse as wh
from qpipe.features.processors import ProcessorChain
from qpipe.features.store import calendar
from qpipe.training import dataset
from qpipe.training.checkpoint import Checkpoint, load_checkpoint
from qpipe.training.engine import predict

PREDICTIONS = "predictions.scores"
PREDICTIONS_DDL = ("date DATE NOT NULL, instrument VARCHAR NOT NULL, score FLOAT, model VARCHAR NOT NULL, "
                   "checkpoint_partition VARCHAR NOT NULL")


def score_days(con: duckdb.DuckDBPyConnection, checkpoint: Checkpoint, first, last, market: str) -> pd.DataFrame:
    """date, instrument, score for the market members on [first, last], processed as at training time."""
    config = checkpoint.config
    days = calendar(con)
    rows = dataset.read_rows(con, config, dataset.history_start(days, first, config), last, known_by=first,
                             market=market)
    processed = ProcessorChain.from_state(checkpoint.sidecar["processor_state"]["infer"])(rows)
    frame = dataset.to_frame(processed, checkpoint.columns, samples_from=first)
    return pd.DataFrame({"date": frame.dates[frame.is_sample], "instrument": frame.instruments[frame.is_sample],
                         "score": predict(checkpoint.model, frame, config).astype(np.float32)})


def write_predictions(con: duckdb.DuckDBPyConnection, store, arch: str, start, end, market: str) -> tuple[int, list[str]]:
    """Replace ``arch``'s scores on [start, end]; returns (rows written, checkpoint partitions used)."""
    days = calendar(con)
    in_range = days[(days >= np.datetime64(pd.Timestamp(start).date(), "D")) &
                    (days <= np.datetime64(pd.Timestamp(end).date(), "D"))]
    by_checkpoint: dict[str, list[np.datetime64]] = {}
    for day in in_range:
        partition = store.newest_at_or_before(arch, str(day))
        if partition is None:
            raise ValueError(f"no {arch} checkpoint at or before {day}; materialize models/{arch}/checkpoint first")
        by_checkpoint.setdefault(partition, []).append(day)
    scored = []
    for partition, covered in by_checkpoint.items():
        frame = score_days(con, load_checkpoint(store.path_for(arch, partition)), covered[0], covered[-1], market)
        scored.append(frame.assign(model=arch, checkpoint_partition=partition))
    scores = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame()
    wh.ensure_table(con, PREDICTIONS, PREDICTIONS_DDL)
    with wh.transaction(con):
        con.execute(f"DELETE FROM {PREDICTIONS} WHERE model = ? AND date BETWEEN ? AND ?",
                    [arch, pd.Timestamp(start).date(), pd.Timestamp(end).date()])
        wh.insert(con, PREDICTIONS, scores)
    return len(scores), list(by_checkpoint)
