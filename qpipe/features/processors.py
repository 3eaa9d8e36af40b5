"""Qlib's data processors (``qlib/data/dataset/processor.py``) on plain pandas frames.

Frame convention: a DataFrame indexed by (datetime, instrument), datetime-major, with plain
column names. Columns whose name starts with ``LABEL`` (Qlib's ``LABEL0``) form the ``"label"``
group, every other column the ``"feature"`` group; ``fields_group=None`` means all columns.
This replaces Qlib's two-level ``('feature', name)`` / ``('label', name)`` column index.

Every processor keeps Qlib's constructor argument names, returns a new frame from
``__call__`` (the input is never modified), and serializes its constructor arguments and its
fitted statistics to JSON through ``to_state()`` / ``from_state()``, so a checkpoint can
re-apply exactly the normalization it was trained with.
"""

from collections.abc import Iterable
from functools import wraps
from inspect import Parameter, signature
from typing import Any

import numpy as np
import pandas as pd
from numba import njit, prange

LABEL_PREFIX = "LABEL"
EPS = 1e-12  # qlib.constant.EPS
MAD_TO_STD = 1.4826
CS_RANK_SCALE = 3.46  # 1 / std of a uniform rank, Qlib's constant


def group_columns(df: pd.DataFrame, fields_group: str | list[str] | None) -> list[str]:
    """Columns of ``df`` (in frame order) that belong to the group(s) named by ``fields_group``."""
    if fields_group is None:
        return list(df.columns)
    groups = [fields_group] if isinstance(fields_group, str) else list(fields_group)
    unknown = set(groups) - {"feature", "label"}
    if unknown:
        raise ValueError(f"unknown fields_group {sorted(unknown)}; use 'feature', 'label' or None")
    wanted = {g == "label" for g in groups}
    return [c for c in df.columns if str(c).startswith(LABEL_PREFIX) in wanted]


def _quiet(method):
    """Run ``method`` under Qlib's IEEE conventions (x/0 = ±inf, inf-inf = NaN) without RuntimeWarnings."""

    @wraps(method)
    def wrapper(*args, **kwargs):
        with np.errstate(divide="ignore", invalid="ignore"):
            return method(*args, **kwargs)

    return wrapper


def _edge_split(df: pd.DataFrame, cols: list[str]) -> int | None:
    """Where ``cols`` sit when they are the frame's first or last columns (the usual layout:
    features, then the label): the column position that splits them from the rest, else None."""
    names, n = list(df.columns), len(cols)
    if names[:n] == cols:
        return n
    if n and names[-n:] == cols:
        return len(names) - n
    return None


def column_block(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """``df[cols].to_numpy()``, without pandas' per-column take when ``cols`` is a block of the frame."""
    if list(df.columns) == cols:
        return df.to_numpy()  # a view of a single-block frame
    split = _edge_split(df, cols)
    if split is None:
        return df[cols].to_numpy()
    return (df.iloc[:, :split] if list(df.columns[:split]) == cols else df.iloc[:, split:]).to_numpy()


def _with_columns(df: pd.DataFrame, cols: list[str], values: np.ndarray | pd.DataFrame) -> pd.DataFrame:
    """A new frame: ``df`` with ``cols`` replaced by ``values`` (the input is not modified)."""
    if not cols:  # the group is not in this frame (a label processor on the features a prediction reads)
        return df
    split = _edge_split(df, cols)
    if split is None:
        out = df.copy()
        out[cols] = values
        return out
    # Built column block by column block: pandas' concat would consolidate them, copying everything.
    values = np.asarray(values)
    if list(df.columns[:split]) == cols:
        out = pd.DataFrame(values, index=df.index, columns=cols, copy=False)
        kept = list(df.columns[split:])
    else:
        out = df.iloc[:, :split].copy(deep=False)
        kept = []
        for k, name in enumerate(cols):
            out[name] = values[:, k]
    for name in kept:
        out[name] = df[name].to_numpy()
    return out


@njit(cache=True)
def _middle(values: np.ndarray, n: int) -> np.float32:
    """numpy's median of values[:n] (reordered in place): the middle element, or the float32 sum
    of the two middle elements halved; NaN when n == 0."""
    if n == 0:
        return np.float32(np.nan)
    k = n // 2
    part = np.partition(values[:n], k)
    if n % 2:
        return part[k]
    return np.float32(part[:k].max() + part[k]) / np.float32(2)


@njit(parallel=True, cache=True)
def _median_and_mad(x: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of float32 x[lo:hi]: np.nanmedian, and np.nanmedian(np.abs(x - median)), one column per thread."""
    cols = x.shape[1]
    median = np.empty(cols, dtype=np.float32)
    mad = np.empty(cols, dtype=np.float32)
    for j in prange(cols):
        values = np.empty(hi - lo, dtype=np.float32)
        n = 0
        for i in range(lo, hi):
            if not np.isnan(x[i, j]):
                values[n] = x[i, j]
                n += 1
        median[j] = _middle(values, n)
        m = 0
        for i in range(n):  # inf - inf is NaN and, as in numpy's nanmedian, not counted
            d = np.float32(abs(np.float32(values[i] - median[j])))
            if not np.isnan(d):
                values[m] = d
                m += 1
        mad[j] = _middle(values, m)
    return median, mad


@njit(parallel=True, cache=True)
def _scale(x: np.ndarray, center: np.ndarray, scale: np.ndarray, clip: bool) -> np.ndarray:
    """float32 (x - center) / scale per column, optionally clipped to [-3, 3] (NaN stays NaN), as numpy computes it."""
    rows, cols = x.shape
    out = np.empty((cols, rows), dtype=np.float32)  # returned transposed: column-major like x
    for j in prange(cols):
        for i in range(rows):
            v = np.float32(np.float32(x[i, j] - center[j]) / scale[j])
            if clip:
                if v > 3:
                    v = np.float32(3)
                elif v < -3:
                    v = np.float32(-3)
            out[j, i] = v
    return out.T


@njit(parallel=True, cache=True)
def _fill_nan(x: np.ndarray, value: np.float32) -> np.ndarray:
    """A copy of float32 x with NaN replaced by ``value``, column-major like x."""
    rows, cols = x.shape
    out = np.empty((cols, rows), dtype=np.float32)
    for j in prange(cols):
        for i in range(rows):
            out[j, i] = value if np.isnan(x[i, j]) else x[i, j]
    return out.T


@njit(parallel=True, cache=True)
def _fill_from_days(x: np.ndarray, day: np.ndarray, means: np.ndarray) -> np.ndarray:
    """A copy of float32 x with each NaN replaced by its day's value, ``means[day[row], column]``; column-major."""
    rows, cols = x.shape
    out = np.empty((cols, rows), dtype=np.float32)
    for j in prange(cols):
        for i in range(rows):
            out[j, i] = means[day[i], j] if np.isnan(x[i, j]) else x[i, j]
    return out.T


def _by_day(df: pd.DataFrame, cols: list[str]) -> pd.api.typing.DataFrameGroupBy:
    """``cols`` grouped by day; the frame itself when they are all its columns (``df[cols]`` copies them)."""
    return (df if list(df.columns) == cols else df[cols]).groupby(level="datetime", sort=False)


def _init_params(cls: type) -> list[str]:
    """Names of the keyword arguments ``cls(...)`` accepts (none for a processor without ``__init__``)."""
    kinds = (Parameter.POSITIONAL_OR_KEYWORD, Parameter.KEYWORD_ONLY)
    return [p.name for p in signature(cls).parameters.values() if p.kind in kinds]


def _state_array(values: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(values.dtype), "values": values.tolist()}


def _array_from_state(state: dict[str, Any]) -> np.ndarray:
    return np.asarray(state["values"], dtype=np.float64).astype(state["dtype"])


class Processor:
    """Base class: stateless by default, usable for inference unless it drops rows by label."""

    def fit(self, df: pd.DataFrame) -> None:
        """Learn statistics from ``df``; stateless processors learn nothing."""

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def is_for_infer(self) -> bool:
        return True

    def select_columns(self, columns: list[str]) -> list[str]:
        """The columns this processor leaves of a frame with ``columns`` (only FilterCol and DropCol remove any)."""
        return columns

    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments, JSON-ready (Qlib names)."""
        return {name: getattr(self, name) for name in _init_params(type(self))}

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"class": type(self).__name__, "kwargs": self.kwargs()}
        fitted = self._fitted_state()
        if fitted is not None:
            state["fitted"] = fitted
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Processor":
        proc = build_processor({"class": state["class"], "kwargs": state.get("kwargs", {})})
        if not isinstance(proc, cls):
            raise TypeError(f"state describes a {state['class']}, not a {cls.__name__}")
        if "fitted" in state:
            proc._load_fitted(state["fitted"])
        return proc

    def _fitted_state(self) -> dict[str, Any] | None:
        """Learned statistics as JSON, None when there are none (yet)."""
        return None

    def _load_fitted(self, fitted: dict[str, Any]) -> None:
        """Restore what ``_fitted_state`` saved."""


class FitWindowProcessor(Processor):
    """A processor fitted on the rows with datetime in [fit_start_time, fit_end_time] (inclusive),
    pooled over instruments and days, then applied to every row."""

    columns: list[str]
    mean_train: np.ndarray
    std_train: np.ndarray

    def __init__(self, fit_start_time: str, fit_end_time: str, fields_group: str | None = None) -> None:
        self.fit_start_time = str(pd.Timestamp(fit_start_time).date())
        self.fit_end_time = str(pd.Timestamp(fit_end_time).date())
        self.fields_group = fields_group

    def _fit_rows(self, df: pd.DataFrame) -> np.ndarray:
        """The fit window's rows (a boolean mask); also fixes the columns this processor works on."""
        dt = df.index.get_level_values("datetime")
        rows = np.asarray((dt >= pd.Timestamp(self.fit_start_time)) & (dt <= pd.Timestamp(self.fit_end_time)))
        if not rows.any():
            raise ValueError(f"{type(self).__name__}: no rows in the fit window "
                             f"[{self.fit_start_time}, {self.fit_end_time}]")
        self.columns = group_columns(df, self.fields_group)
        return rows

    def _fit_values(self, df: pd.DataFrame) -> np.ndarray:
        rows = self._fit_rows(df)
        # column-major like pandas' .values: numpy's pairwise float32 sums then match Qlib bit for bit
        return np.asfortranarray(column_block(df, self.columns)[rows])

    def _fitted_values(self, df: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "std_train"):
            raise RuntimeError(f"{type(self).__name__} must be fitted (or loaded from state) before use")
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise KeyError(f"{type(self).__name__} was fitted on columns missing from the frame: {missing}")
        return column_block(df, self.columns)

    def _fitted_state(self) -> dict[str, Any] | None:
        if not hasattr(self, "std_train"):
            return None
        return {"columns": list(self.columns), "mean_train": _state_array(self.mean_train),
                "std_train": _state_array(self.std_train)}

    def _load_fitted(self, fitted: dict[str, Any]) -> None:
        self.columns = list(fitted["columns"])
        self.mean_train = _array_from_state(fitted["mean_train"])
        self.std_train = _array_from_state(fitted["std_train"])


class RobustZScoreNorm(FitWindowProcessor):
    """(x - median) / ((MAD + 1e-12) * 1.4826), optionally clipped to [-3, 3]; ±inf -> ±3, NaN stays."""

    def __init__(self, fit_start_time: str, fit_end_time: str, fields_group: str | None = None,
                 clip_outlier: bool = True) -> None:
        super().__init__(fit_start_time, fit_end_time, fields_group)
        self.clip_outlier = clip_outlier

    @_quiet
    def fit(self, df: pd.DataFrame) -> None:
        rows = self._fit_rows(df)
        x = column_block(df, self.columns)
        window = np.flatnonzero(rows)
        lo, hi = int(window[0]), int(window[-1]) + 1
        if x.dtype == np.float32 and hi - lo == len(window):  # a contiguous window: one parallel pass, no copy
            self.mean_train, mad = _median_and_mad(np.asfortranarray(x), lo, hi)
        else:
            x = x[rows]
            self.mean_train = np.nanmedian(x, axis=0)
            mad = np.nanmedian(np.abs(x - self.mean_train), axis=0)
        self.std_train = (mad + EPS) * MAD_TO_STD

    @_quiet
    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        x = self._fitted_values(df)
        if x.dtype == self.mean_train.dtype == self.std_train.dtype == np.float32:
            return _with_columns(df, self.columns, _scale(np.asfortranarray(x), self.mean_train, self.std_train,
                                                          self.clip_outlier))
        x = (x - self.mean_train) / self.std_train
        return _with_columns(df, self.columns, np.clip(x, -3, 3) if self.clip_outlier else x)


class ZScoreNorm(FitWindowProcessor):
    """(x - mean) / std with pooled nanmean / nanstd (ddof=0); columns with std == 0 are left unchanged."""

    @_quiet
    def fit(self, df: pd.DataFrame) -> None:
        x = self._fit_values(df)
        mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
        constant = std == 0
        self.mean_train = np.where(constant, 0, mean).astype(mean.dtype)
        self.std_train = np.where(constant, 1, std).astype(std.dtype)

    @_quiet
    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        x = (self._fitted_values(df) - self.mean_train) / self.std_train
        return _with_columns(df, self.columns, x)


class Fillna(Processor):
    """NaN -> ``fill_value`` in the group (all columns when ``fields_group`` is None)."""

    def __init__(self, fields_group: str | None = None, fill_value: float = 0) -> None:
        self.fields_group = fields_group
        self.fill_value = fill_value

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = group_columns(df, self.fields_group)
        x = column_block(df, cols)
        if x.dtype == np.float32:
            return _with_columns(df, cols, _fill_nan(np.asfortranarray(x), np.float32(self.fill_value)))
        return _with_columns(df, cols, df[cols].fillna(self.fill_value))


class DropnaLabel(Processor):
    """Drop rows whose label is NaN; learn-only, since inference must keep every row."""

    def __init__(self, fields_group: str = "label") -> None:
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.dropna(subset=group_columns(df, self.fields_group))

    def is_for_infer(self) -> bool:
        return False


class DropnaProcessor(Processor):
    """Drop rows with a NaN in the group (all columns when ``fields_group`` is None)."""

    def __init__(self, fields_group: str | None = None) -> None:
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        return df.dropna(subset=group_columns(df, self.fields_group))


class CSRankNorm(Processor):
    """Per datetime: (pct-rank with average ties - 0.5) * 3.46; a lone stock gets +1.73. Output float64, as Qlib."""

    def __init__(self, fields_group: str | None = None) -> None:
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = group_columns(df, self.fields_group)
        return _with_columns(df, cols, (_by_day(df, cols).rank(pct=True) - 0.5) * CS_RANK_SCALE)


class CSZScoreNorm(Processor):
    """Per datetime: (x - mean) / std (ddof=1), or with method="robust" (x - median) / (MAD * 1.4826) clipped to ±3."""

    def __init__(self, fields_group: str | list[str] | None = None, method: str = "zscore") -> None:
        if method not in ("zscore", "robust"):
            raise ValueError(f"CSZScoreNorm method must be 'zscore' or 'robust', got {method!r}")
        self.fields_group = fields_group
        self.method = method

    @_quiet
    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = group_columns(df, self.fields_group)
        x = df[cols]
        if self.method == "zscore":
            days = _by_day(df, cols)
            return _with_columns(df, cols, (x - days.transform("mean")) / days.transform("std"))
        centred = x - _by_day(df, cols).transform("median")
        mad = centred.abs().groupby(level="datetime", sort=False).transform("median")
        return _with_columns(df, cols, np.clip(centred / mad / MAD_TO_STD, -3, 3))


class ProcessInf(Processor):
    """Per datetime and column, ±inf -> the mean of that day's finite values (NaN if there are none)."""

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        x = df.to_numpy()
        inf = np.isinf(x)
        if not inf.any():
            return df.copy()
        finite = df.mask(inf)
        day_mean = finite.groupby(level="datetime", sort=False).transform("mean").to_numpy()
        return pd.DataFrame(np.where(inf, day_mean, x).astype(x.dtype), index=df.index, columns=df.columns)


class CSZFillna(Processor):
    """Per datetime, NaN -> the cross-sectional mean of that column."""

    def __init__(self, fields_group: str | None = None) -> None:
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = group_columns(df, self.fields_group)
        x = column_block(df, cols)
        if x.dtype != np.float32:
            return _with_columns(df, cols, df[cols].fillna(_by_day(df, cols).transform("mean")))
        # pandas' own daily means (one row per day), then one pass that fills from them: the same values as
        # fillna(transform("mean")), without its copies of the block (3.75 blocks at its peak, one here)
        means = _by_day(df, cols).mean()
        day = pd.factorize(df.index.get_level_values("datetime"), sort=False)[0]
        return _with_columns(df, cols, _fill_from_days(np.asfortranarray(x), day, means.to_numpy(np.float32)))


class FilterCol(Processor):
    """Keep the group's columns named in ``col_list`` in their ORIGINAL frame order, plus every other column."""

    def __init__(self, fields_group: str = "feature", col_list: Iterable[str] = ()) -> None:
        self.fields_group = fields_group
        self.col_list = list(col_list)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        return df[self.select_columns(list(df.columns))].copy()

    def select_columns(self, columns: list[str]) -> list[str]:
        group = set(group_columns(pd.DataFrame(columns=columns), self.fields_group))
        keep = set(self.col_list)
        return [c for c in columns if c not in group or c in keep]


class DropCol(Processor):
    """Remove the columns named in ``col_list`` (names absent from the frame are ignored)."""

    def __init__(self, col_list: Iterable[str] = ()) -> None:
        self.col_list = list(col_list)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        dropped = [c for c in self.col_list if c in df.columns]
        return df.drop(columns=dropped) if dropped else df  # a drop of nothing copies the block (a prediction's)

    def select_columns(self, columns: list[str]) -> list[str]:
        return [c for c in columns if c not in self.col_list]


PROCESSORS: dict[str, type[Processor]] = {cls.__name__: cls for cls in (
    RobustZScoreNorm, ZScoreNorm, Fillna, DropnaLabel, DropnaProcessor, CSRankNorm, CSZScoreNorm, ProcessInf,
    CSZFillna, FilterCol, DropCol)}


def build_processor(entry: dict[str, Any] | str, fit_start_time: str | None = None,
                    fit_end_time: str | None = None) -> Processor:
    """A processor from a Qlib YAML entry ``{"class": ..., "kwargs": {...}, "module_path": ...}`` (or a class name).

    ``module_path`` is ignored. Like Qlib's handler, ``fit_start_time``/``fit_end_time`` given here
    are injected into (and override those of) every processor that takes them.
    """
    if isinstance(entry, str):
        entry = {"class": entry}
    name = entry.get("class")
    if name not in PROCESSORS:
        raise ValueError(f"unknown processor class {name!r}; known: {sorted(PROCESSORS)}")
    cls = PROCESSORS[name]
    kwargs = dict(entry.get("kwargs") or {})
    accepted = set(_init_params(cls))
    if fit_start_time is not None and fit_end_time is not None and "fit_start_time" in accepted:
        kwargs.update(fit_start_time=fit_start_time, fit_end_time=fit_end_time)
    bad = sorted(set(kwargs) - accepted)
    if bad:
        raise ValueError(f"{name} got unexpected kwargs {bad}; it accepts {sorted(accepted)}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{name}: {err}") from None


class ProcessorChain:
    """Processors applied in order; fitting is sequential, each fitted on the previous one's output (Qlib IT_FIT_SEQ)."""

    def __init__(self, processors: Iterable[Processor]) -> None:
        self.processors = list(processors)

    @classmethod
    def from_config(cls, entries: Iterable[dict[str, Any] | str], fit_start_time: str | None = None,
                    fit_end_time: str | None = None) -> "ProcessorChain":
        return cls(build_processor(e, fit_start_time, fit_end_time) for e in entries)

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        for proc in self.processors:
            proc.fit(df)
            df = proc(df)
        return df

    def fit(self, df: pd.DataFrame) -> None:
        self.fit_transform(df)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        for proc in self.processors:
            df = proc(df)
        return df

    def is_for_infer(self) -> bool:
        return all(p.is_for_infer() for p in self.processors)

    def select_columns(self, columns: list[str]) -> list[str]:
        """The columns the chain leaves of a frame with ``columns``."""
        for proc in self.processors:
            columns = proc.select_columns(columns)
        return columns

    def read_columns(self, columns: list[str]) -> list[str]:
        """The columns the chain reads: those its leading FilterCol/DropCol keep (so a reader can leave the rest out)."""
        for proc in self.processors:
            if not isinstance(proc, FilterCol | DropCol):
                break
            columns = proc.select_columns(columns)
        return columns

    def to_state(self) -> dict[str, Any]:
        return {"class": "ProcessorChain", "processors": [p.to_state() for p in self.processors]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ProcessorChain":
        return cls(Processor.from_state(s) for s in state["processors"])
