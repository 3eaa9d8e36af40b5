"""qpipe's Alpha158, Alpha360 and label equal Qlib's own ``D.features`` on the golden fixture.

The goldens were produced by pyqlib 0.9.7 (see golden/README.md). Only rows where the panel has
a price row (``panel.present``) are compared; Qlib emits exactly those rows.
"""

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qpipe.features.alpha158 import ALPHA158_NAMES, alpha158_columns
from qpipe.features.alpha360 import ALPHA360_NAMES, alpha360_columns
from qpipe.features.label import label
from qpipe.features.panel import Panel, panel_from_frame

GOLDEN = Path(__file__).parent / "golden"
RTOL = 1e-5  # |ours - qlib| <= RTOL * max(1, |qlib|)


@pytest.fixture(scope="module")
def panel() -> Panel:
    return panel_from_frame(pd.read_csv(GOLDEN / "fixture_prices.csv", parse_dates=["date"]))


def qlib_columns(file: str, panel: Panel) -> tuple[list[str], dict[str, np.ndarray]]:
    """Golden long frame -> Qlib's column names and one float32 [T, J] array per column (NaN off-rows)."""
    frame = pd.read_parquet(GOLDEN / file)
    rows = np.searchsorted(panel.dates, frame["date"].to_numpy().astype("datetime64[D]"))
    cols = np.searchsorted(panel.instruments.astype(str), frame["instrument"].to_numpy().astype(str))
    emitted = np.zeros(panel.shape, dtype=bool)
    emitted[rows, cols] = True
    np.testing.assert_array_equal(emitted, panel.present, err_msg="Qlib's rows differ from panel.present")
    names = list(frame.columns[2:])
    out = {}
    for name in names:
        arr = np.full(panel.shape, np.nan, dtype=np.float32)
        arr[rows, cols] = frame[name].to_numpy()
        out[name] = arr
    return names, out


def mismatches(name: str, ours: np.ndarray, qlib: np.ndarray, panel: Panel) -> str | None:
    """None when equal under the contract (NaN mask, ±inf, tolerance), else one line with an example."""
    if ours.shape != panel.shape or ours.dtype != np.float32:
        return f"{name}: got {ours.dtype} {ours.shape}, want float32 {panel.shape}"
    a, b = ours.astype(np.float64), qlib.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    finite = ~nan_b & np.isfinite(b) & np.isfinite(a)
    bad = (nan_a != nan_b) | (np.isinf(a) | np.isinf(b)) & (a != b)
    bad[finite] = np.abs(a[finite] - b[finite]) > RTOL * np.maximum(1, np.abs(b[finite]))
    bad &= panel.present
    if not bad.any():
        return None
    t, j = np.argwhere(bad)[0]
    return (f"{name}: {bad.sum()} cells, e.g. {panel.dates[t]} {panel.instruments[j]} "
            f"ours={float(a[t, j])!r} qlib={float(b[t, j])!r}")


def assert_matches(names: list[str], ours: Iterable[tuple[str, np.ndarray]], panel: Panel, file: str) -> None:
    """``ours`` yields (name, [T, J] array) in column order; names and order must be Qlib's."""
    qlib_names, qlib = qlib_columns(file, panel)
    assert names == qlib_names
    ours = list(ours)
    assert [name for name, _ in ours] == qlib_names
    failures = [m for name, arr in ours if (m := mismatches(name, arr, qlib[name], panel))]
    assert not failures, f"{len(failures)} columns differ from Qlib:\n" + "\n".join(failures)


def test_alpha158_matches_qlib(panel: Panel):
    assert_matches(list(ALPHA158_NAMES), alpha158_columns(panel), panel, "qlib_alpha158.parquet")


def test_alpha360_matches_qlib(panel: Panel):
    assert_matches(list(ALPHA360_NAMES), alpha360_columns(panel), panel, "qlib_alpha360.parquet")


def test_label_matches_qlib(panel: Panel):
    assert_matches(["LABEL0"], [("LABEL0", label(panel))], panel, "qlib_label.parquet")
