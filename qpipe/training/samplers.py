"""A frame's sample rows as model-input batches, gathered on the training device.

The features go to the device once, as one contiguous float32 tensor; a batch is an
``index_select`` of it. Sequences are never materialized as [N, T, F]: Alpha360 rows are
reshaped per batch, and step_len windows are gathered through an [N, T] row-index map.
"""

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from qpipe.models.spec import SamplerKind
from qpipe.training.frame import TrainingFrame


class Sampler:
    def __init__(self, gather: Callable[[torch.Tensor], torch.Tensor], label: torch.Tensor, dates: np.ndarray,
                 day_starts: np.ndarray | None, side: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = ()):
        self.gather = gather  # sample positions [B] -> the features the network reads
        self.label = label  # [n] on the device, NaN where unknown
        self.dates = dates  # datetime64[D] [n], for daily metrics
        self.side = side  # sample positions [B] -> what the network takes after the features (HIST's concept rows)
        self._day_starts = day_starts  # [n_days + 1] sample offsets when each batch is one day
        self._positions = torch.arange(len(label), device=label.device)

    def inputs(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network's arguments for a batch: its features, then any side inputs."""
        return (self.gather(positions), *(gather(positions) for gather in self.side))

    @property
    def n(self) -> int:
        return len(self.label)

    def steps_per_pass(self, batch_size: int) -> int:
        if self._day_starts is not None:
            return len(self._day_starts) - 1
        if self.n < batch_size:
            raise ValueError(f"{self.n} training samples is fewer than one batch (batch_size {batch_size}): lower "
                             "batch_size in the checkpoint's params, or train on more days (train_days)")
        return self.n // batch_size

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Endless shuffled batches; as in Qlib, each pass drops its last incomplete batch."""
        steps = self.steps_per_pass(batch_size)
        while True:
            if self._day_starts is not None:
                for day in torch.randperm(steps, generator=generator).tolist():
                    yield self._positions[self._day_starts[day] : self._day_starts[day + 1]]
            else:
                order = torch.randperm(self.n, generator=generator).to(self.label.device)
                yield from order[: steps * batch_size].view(steps, batch_size)

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Batches in row order, the last partial one included (one day per batch for daily samplers)."""
        bounds = self._day_starts if self._day_starts is not None else [*range(0, self.n, batch_size), self.n]
        for start, end in zip(bounds[:-1], bounds[1:]):
            yield self._positions[start:end]


def make_sampler(
    frame: TrainingFrame,
    kind: SamplerKind,
    device: torch.device,
    *,
    step_len: int | None = None,
    d_feat: int | None = None,
    with_concepts: bool = False,
) -> Sampler:
    """Flat rows, Alpha360 rows reshaped to [B, T, d_feat] (step_len None), or TSDatasetH windows;
    ``with_concepts`` adds each sample's concept-membership row as a side input."""
    samples = frame.sample_rows
    if kind == "flat" or step_len is None:
        if kind != "flat":
            _check_lag_blocks(frame.columns, d_feat)
        # every row a sample: the frame itself, not a copy of frames that may be memory-mapped
        rows = frame.features if len(samples) == len(frame.features) else frame.features[samples]
        features = _to_device(rows, device)
        gather: Callable[[torch.Tensor], torch.Tensor] = _Rows(features) if kind == "flat" else _LagBlocks(features, d_feat)
    else:
        if d_feat != len(frame.columns):
            raise ValueError(f"d_feat = {d_feat} but the frame has {len(frame.columns)} feature columns")
        features = _to_device(frame.features, device)
        index_map = window_rows(frame.dates, frame.instruments, samples, step_len)
        gather = _Windows(features, _to_device(index_map, device))
    label = _to_device(frame.label[samples], device)
    dates = frame.dates[samples]
    day_starts = None
    if kind == "daily":
        day_starts = np.append(np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]]), len(dates))
    side = ()
    if with_concepts:
        if frame.concepts is None:
            raise ValueError("this model reads each stock's concepts, but the frame has no concept membership")
        side = (_Lookup(_to_device(frame.concepts, device), _to_device(frame.concept_row[samples], device)),)
    return Sampler(gather, label, dates, day_starts, side)


def window_rows(dates: np.ndarray, instruments: np.ndarray, samples: np.ndarray, step_len: int) -> np.ndarray:
    """Row indices [len(samples), step_len] of TSDatasetH windows with fillna_type="ffill+bfill".

    A window holds the instrument's rows at the last ``step_len`` dates of the frame's date index
    (the union of all rows' dates) ending at the sample's date. A date where the instrument has no
    row takes the nearest earlier row inside the window, else the first row inside the window
    (Qlib fills the window's row indices forward, then backward), so an instrument that has just
    entered repeats its first row.
    """
    day_values, day = np.unique(dates, return_inverse=True)
    names, instrument = np.unique(instruments, return_inverse=True)
    grid = np.full((len(day_values), len(names)), -1, dtype=np.int64)
    grid[day, instrument] = np.arange(len(dates))
    steps = np.arange(step_len)
    window_day = day[samples, None] + steps - (step_len - 1)
    window = np.where(window_day >= 0, grid[np.maximum(window_day, 0), instrument[samples, None]], -1)
    present = window >= 0
    last_present = np.maximum.accumulate(np.where(present, steps, -1), axis=1)
    source = np.where(last_present >= 0, last_present, present.argmax(axis=1)[:, None])
    filled = np.take_along_axis(window, source, axis=1)
    return filled.astype(np.int32 if len(dates) < 2**31 else np.int64)


def lag_blocks_problem(columns: list[str], d_feat: int | None) -> str:
    """Why Qlib's reshape of a flat row into d_feat blocks of lags T-1 ... 0 (CLOSE59 ... CLOSE0, OPEN59 ...) is
    wrong for these columns ("" when it is right)."""
    problem = _lag_order_problem(columns, d_feat)
    fields = list(dict.fromkeys(c.rstrip("0123456789") for c in columns))
    if problem and fields and not _lag_order_problem(columns, len(fields)):  # the columns are lag blocks: say how many
        return (f"a sequence model cuts a row into d_feat blocks of lags (Qlib's reshape), and these are {len(fields)} "
                f"fields ({', '.join(fields)}) of {len(columns) // len(fields)} lags: d_feat must be {len(fields)}, "
                f"not {d_feat}")
    return problem


def _lag_order_problem(columns: list[str], d_feat: int | None) -> str:
    if not d_feat or len(columns) % d_feat or not columns:
        return f"{len(columns)} feature columns do not split into d_feat = {d_feat} blocks"
    steps = len(columns) // d_feat
    for block in range(d_feat):
        names = columns[block * steps : (block + 1) * steps]
        field = names[-1].rstrip("0123456789")
        expected = [f"{field}{lag}" for lag in range(steps - 1, -1, -1)]
        if names != expected:
            bad = next(i for i, (got, want) in enumerate(zip(names, expected)) if got != want)
            return (f"column {block * steps + bad} is {names[bad]!r}, expected {expected[bad]!r}: sequence models "
                    f"reshape rows as {d_feat} blocks of lags {steps - 1}..0 (Alpha360 order)")
    return ""


def _check_lag_blocks(columns: list[str], d_feat: int | None) -> None:
    problem = lag_blocks_problem(columns, d_feat)
    if problem:
        raise ValueError(problem)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """One transfer (none on the CPU, where the tensor shares the array's memory and is only read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # e.g. arrays from Arrow
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)


class _Rows:
    """Flat rows: [B, F]."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return self.features.index_select(0, positions)


class _LagBlocks:
    """Qlib's Alpha360 reshape: [B, d_feat * T] -> [B, d_feat, T] -> [B, T, d_feat], oldest step first."""

    def __init__(self, features: torch.Tensor, d_feat: int):
        self.features = features
        self.d_feat = d_feat

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return self.features.index_select(0, positions).view(len(positions), self.d_feat, -1).transpose(1, 2)


class _Lookup:
    """A row of a small table per sample (a stock's concept memberships): [B, K]."""

    def __init__(self, table: torch.Tensor, row: torch.Tensor):
        self.table = table
        self.row = row  # [n] each sample's row of the table

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table.index_select(0, self.row.index_select(0, positions))


class _Windows:
    """TSDatasetH windows: [B, step_len, F] gathered through the row-index map."""

    def __init__(self, features: torch.Tensor, index_map: torch.Tensor):
        self.features = features
        self.index_map = index_map

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        rows = self.index_map.index_select(0, positions).view(-1)
        return self.features.index_select(0, rows).view(len(positions), -1, self.features.shape[1])
