"""The engine's input: one window of processed features and labels, as plain arrays."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrainingFrame:
    """Rows sorted by (date, instrument); ``is_sample`` marks the rows to train on or predict.

    The other rows are history: the step_len sequence builder may read them, as TSDatasetH reads
    the dates before a segment's start. Features are already normalized and filled.
    """

    features: np.ndarray  # float32 [R, F]
    label: np.ndarray  # float32 [R], NaN where unknown
    dates: np.ndarray  # datetime64[D] [R]
    instruments: np.ndarray  # str [R]
    columns: list[str]  # F names, in the feature table's order
    is_sample: np.ndarray  # bool [R]
    concepts: np.ndarray | None = None  # float32 [S, K] 0/1: each stock's concept memberships (HIST reads them)
    concept_row: np.ndarray | None = None  # int [R]: each row's stock in ``concepts`` (a row per stock, not per row)

    def __post_init__(self) -> None:
        n = len(self.dates)
        if self.features.dtype != np.float32 or self.features.ndim != 2:
            raise ValueError(f"features must be a float32 [rows, columns] array, got {self.features.dtype} {self.features.shape}")
        if self.features.shape != (n, len(self.columns)):
            raise ValueError(f"features have shape {self.features.shape}; expected ({n}, {len(self.columns)}) for {n} dates and {len(self.columns)} columns")
        for name in ("label", "instruments", "is_sample"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows; dates has {n}")
        self._check_concepts(n)
        if self.label.dtype != np.float32:
            raise ValueError(f"label must be float32, got {self.label.dtype}")
        if self.dates.dtype != np.dtype("datetime64[D]"):
            raise ValueError(f"dates must be datetime64[D], got {self.dates.dtype}")
        if self.is_sample.dtype != np.bool_:
            raise ValueError(f"is_sample must be bool, got {self.is_sample.dtype}")
        ordered = (self.dates[1:] > self.dates[:-1]) | ((self.dates[1:] == self.dates[:-1]) & (self.instruments[1:] > self.instruments[:-1]))
        if not ordered.all():
            row = int(np.flatnonzero(~ordered)[0]) + 1
            raise ValueError(f"rows must be sorted by (date, instrument) without duplicates; row {row} ({self.dates[row]}, {self.instruments[row]}) breaks the order")
        bad_rows = np.flatnonzero(~np.isfinite(self.features.sum(axis=1, dtype=np.float64)))
        if len(bad_rows):
            row = int(bad_rows[0])
            col = int(np.flatnonzero(~np.isfinite(self.features[row]))[0])
            raise ValueError(
                f"feature {self.columns[col]!r} is {self.features[row, col]} at ({self.dates[row]}, {self.instruments[row]}); "
                "features must be finite (Qlib clips with RobustZScoreNorm and fills with Fillna)"
            )

    def _check_concepts(self, n: int) -> None:
        if (self.concepts is None) != (self.concept_row is None):
            raise ValueError("concepts and concept_row come together: the stocks' memberships and each row's stock")
        if self.concepts is None:
            return
        if self.concepts.dtype != np.float32 or self.concepts.ndim != 2:
            raise ValueError(f"concepts must be a float32 [stocks, concepts] array, got {self.concepts.dtype} {self.concepts.shape}")
        if not np.issubdtype(self.concept_row.dtype, np.integer) or self.concept_row.shape != (n,):
            raise ValueError(f"concept_row must be an integer array of {n} rows, got {self.concept_row.dtype} {self.concept_row.shape}")
        if n and not 0 <= self.concept_row.min() <= self.concept_row.max() < len(self.concepts):
            raise ValueError(f"concept_row points outside the {len(self.concepts)} stocks of concepts")

    @property
    def sample_rows(self) -> np.ndarray:
        return np.flatnonzero(self.is_sample)
