"""Qlib processors: hand-derived values from qlib.md §3.4, Qlib's own outputs (goldens), JSON round-trips."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qpipe.features.processors import (
    _median_and_mad,
    CSRankNorm,
    CSZFillna,
    CSZScoreNorm,
    DropCol,
    DropnaLabel,
    Fillna,
    FilterCol,
    Processor,
    ProcessorChain,
    ProcessInf,
    RobustZScoreNorm,
    ZScoreNorm,
    build_processor,
)

GOLDEN = Path(__file__).parent / "golden" / "qlib_processors"
META = json.loads((GOLDEN / "meta.json").read_text())


def frame(days: list[str], instruments: list[str], **columns: list[float]) -> pd.DataFrame:
    """A float32 (datetime, instrument) frame; ``days[i]`` and ``instruments[i]`` index row i."""
    index = pd.MultiIndex.from_arrays([pd.to_datetime(days), instruments], names=["datetime", "instrument"])
    return pd.DataFrame({k: np.asarray(v, dtype=np.float32) for k, v in columns.items()}, index=index)


def one_day(**columns: list[float]) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return frame(["2020-01-02"] * n, [f"S{i}" for i in range(n)], **columns)


def roundtrip(proc):
    return type(proc).from_state(json.loads(json.dumps(proc.to_state())))


# --- hand-derived values -------------------------------------------------------------------------

def test_cs_rank_norm_average_ties_and_lone_stock():
    df = frame(["2020-01-02"] * 3 + ["2020-01-03"], ["A", "B", "C", "A"], LABEL0=[1, 2, 2, 5], F=[0, 0, 0, 0])
    out = CSRankNorm(fields_group="label")(df)
    # ranks [1, 2.5, 2.5] / 3 -> (r - 0.5) * 3.46; a lone stock has pct rank 1 -> +1.73
    np.testing.assert_allclose(out["LABEL0"], [(1 / 3 - 0.5) * 3.46, (2.5 / 3 - 0.5) * 3.46,
                                               (2.5 / 3 - 0.5) * 3.46, 1.73], rtol=1e-12)
    assert out["F"].equals(df["F"])


def test_robust_zscore_constant_column_scale_and_clip():
    fit = one_day(F=[2, 2, 2, 2, 2], G=[1, 2, 3, 4, 100])
    proc = RobustZScoreNorm("2020-01-01", "2020-01-02", fields_group="feature", clip_outlier=True)
    proc.fit(fit)
    assert proc.std_train[0] == np.float32(np.float32(1e-12) * np.float32(1.4826))  # (MAD 0 + 1e-12) * 1.4826
    assert proc.mean_train[1] == 3 and proc.std_train[1] == np.float32(1.4826)  # |G - 3| -> MAD 1
    test = frame(["2020-02-03"] * 6, list("ABCDEF"), F=[2, 2.1, 1.9, np.inf, -np.inf, np.nan],
                 G=[4, 3, -50, np.nan, np.inf, 1])
    out = proc(test)
    np.testing.assert_array_equal(out["F"], np.float32([0, 3, -3, 3, -3, np.nan]))
    np.testing.assert_allclose(out["G"], [1 / 1.4826, 0, -3, np.nan, 3, -2 / 1.4826], rtol=1e-6)
    assert out["F"].dtype == np.float32


def test_parallel_median_and_mad_equal_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1001, 7)).astype(np.float32) * 1e3
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 1] = np.nan  # no values at all
    x[:500, 2] = np.nan  # an even count left
    x[::3, 3] = np.inf  # the median is inf: inf - inf deviations are NaN and not counted
    x[::5, 4] = -np.inf
    x[:, 5] = 1.5  # constant
    window = slice(100, 950)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        median = np.nanmedian(x[window], axis=0)
        mad = np.nanmedian(np.abs(x[window] - median), axis=0)
    ours = _median_and_mad(np.asfortranarray(x), window.start, window.stop)
    np.testing.assert_array_equal(ours[0], median)
    np.testing.assert_array_equal(ours[1], mad)


def test_robust_zscore_fits_only_inside_the_window_and_noclip_keeps_inf():
    df = frame(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"], list("AAAA"), F=[1, 2, 3, 1000])
    proc = RobustZScoreNorm("2020-01-02", "2020-01-06", fields_group="feature", clip_outlier=False)
    proc.fit(df)
    assert proc.mean_train[0] == 2  # 1000 on 2020-01-07 is outside the fit window
    out = proc(df.assign(F=np.float32([2, np.inf, -np.inf, 1000])))
    assert out["F"].iloc[0] == 0 and out["F"].iloc[1] == np.inf and out["F"].iloc[2] == -np.inf
    assert out["F"].iloc[3] == pytest.approx(998 / ((1 + 1e-12) * 1.4826), rel=1e-6)


def test_zscore_norm_ddof0_and_constant_column_unchanged():
    df = one_day(F=[1, 2, 3], C=[7, 7, 7], LABEL0=[5, 6, 7])
    proc = ZScoreNorm("2020-01-01", "2020-12-31", fields_group="feature")
    proc.fit(df)
    out = proc(df)
    np.testing.assert_allclose(out["F"], [-1.224745, 0, 1.224745], rtol=1e-6)  # std sqrt(2/3), ddof 0
    np.testing.assert_array_equal(out["C"], df["C"])
    np.testing.assert_array_equal(out["LABEL0"], df["LABEL0"])


def test_process_inf_uses_the_days_finite_mean():
    df = frame(["2020-01-02"] * 4 + ["2020-01-03"] * 2, list("ABCDAB"),
               F=[1, 3, np.inf, np.nan, np.inf, -np.inf], G=[-np.inf, 4, 6, 8, 1, 1])
    out = ProcessInf()(df)
    np.testing.assert_array_equal(out["F"], np.float32([1, 3, 2, np.nan, np.nan, np.nan]))
    np.testing.assert_array_equal(out["G"], np.float32([6, 4, 6, 8, 1, 1]))


def test_cs_zscore_norm_plain_and_robust():
    df = one_day(F=[1, 2, 3, 4, 100], LABEL0=[1, 2, 3, np.nan, 5])
    out = CSZScoreNorm(fields_group="label")(df)
    std = np.std([1, 2, 3, 5], ddof=1)
    np.testing.assert_allclose(out["LABEL0"], [(v - 2.75) / std for v in [1, 2, 3, np.nan, 5]], rtol=1e-6)
    robust = CSZScoreNorm(fields_group="feature", method="robust")(df)
    np.testing.assert_allclose(robust["F"], [-2 / 1.4826, -1 / 1.4826, 0, 1 / 1.4826, 3], rtol=1e-6)
    with pytest.raises(ValueError, match="method"):
        CSZScoreNorm(method="minmax")


def test_fillna_cszfillna_only_touch_their_group():
    df = frame(["2020-01-02"] * 3 + ["2020-01-03"], list("ABCA"), F=[1, np.nan, 3, np.nan],
               LABEL0=[np.nan, 1, 2, 3])
    filled = Fillna(fields_group="feature", fill_value=-1)(df)
    np.testing.assert_array_equal(filled["F"], np.float32([1, -1, 3, -1]))
    assert np.isnan(filled["LABEL0"].iloc[0])
    cs = CSZFillna(fields_group="feature")(df)
    np.testing.assert_array_equal(cs["F"], np.float32([1, 2, 3, np.nan]))  # a day with no value stays NaN
    assert Fillna()(df).isna().sum().sum() == 0


@pytest.mark.parametrize("order", ["date-major", "instrument-major"])
def test_csz_fillna_is_pandas_daily_mean_fill_bit_for_bit_in_any_row_order(order):
    """Its one-pass fill from pandas' daily means equals Qlib's expression, fillna of transform("mean"), on a
    frame of features and label (only the features filled) whose days need not be contiguous."""
    rng = np.random.default_rng(5)
    days, names = pd.date_range("2020-01-01", periods=40), [f"S{i:02d}" for i in range(30)]
    index = pd.MultiIndex.from_product([days, names], names=["datetime", "instrument"])
    values = rng.standard_normal((len(index), 9)).astype(np.float32) * 100
    values[rng.random(values.shape) < 0.2] = np.nan
    values[:30, 0] = np.nan  # a day without any value of a column stays NaN
    df = pd.DataFrame(values, index=index, columns=[*(f"F{k}" for k in range(8)), "LABEL0"])
    if order == "instrument-major":
        df = df.swaplevel().sort_index().swaplevel()
    features = [f"F{k}" for k in range(8)]
    expected = df[features].fillna(df[features].groupby(level="datetime").transform("mean"))
    out = CSZFillna(fields_group="feature")(df)
    np.testing.assert_array_equal(out[features].to_numpy().view(np.uint32), expected.to_numpy().view(np.uint32))
    assert out["LABEL0"].equals(df["LABEL0"]) and out.index.equals(df.index) and out[features].isna().sum().sum() == 30
    assert out[features].dtypes.eq(np.float32).all()


def test_dropna_label_is_learn_only():
    df = one_day(F=[np.nan, 2, 3], LABEL0=[1, np.nan, 3])
    out = DropnaLabel()(df)
    assert list(out.index.get_level_values("instrument")) == ["S0", "S2"]
    assert not DropnaLabel().is_for_infer() and Fillna().is_for_infer()
    assert not ProcessorChain([Fillna(), DropnaLabel()]).is_for_infer()


def test_filter_col_keeps_original_order_and_drop_col():
    df = one_day(KLEN=[1], ROC60=[2], KLOW=[3], STD5=[4], LABEL0=[5])
    out = FilterCol(fields_group="feature", col_list=["STD5", "KLEN", "KLOW", "NOT_THERE"])(df)
    assert list(out.columns) == ["KLEN", "KLOW", "STD5", "LABEL0"]
    assert list(DropCol(col_list=["ROC60", "LABEL0", "NOT_THERE"])(df).columns) == ["KLEN", "KLOW", "STD5"]
    assert DropCol(col_list=["NOT_THERE"])(df) is df  # nothing to drop: no copy (a prediction reads without them)


def test_processors_do_not_modify_their_input():
    df = one_day(F=[1, np.nan, np.inf], LABEL0=[1, 2, 3])
    before = df.copy()
    chain = ProcessorChain([ProcessInf(), RobustZScoreNorm("2020-01-01", "2020-01-02", "feature"),
                            Fillna("feature"), CSRankNorm("label")])
    chain.fit_transform(df)
    pd.testing.assert_frame_equal(df, before)


def test_unfitted_processor_refuses_to_transform():
    with pytest.raises(RuntimeError, match="fitted"):
        ZScoreNorm("2020-01-01", "2020-01-02")(one_day(F=[1.0]))
    with pytest.raises(ValueError, match="no rows in the fit window"):
        ZScoreNorm("2019-01-01", "2019-01-02").fit(one_day(F=[1.0]))


# --- YAML entries ----------------------------------------------------------------------------------

def test_build_processor_accepts_qlib_yaml_entries():
    proc = build_processor({"class": "RobustZScoreNorm", "module_path": "qlib.data.dataset.processor",
                            "kwargs": {"fields_group": "feature", "clip_outlier": True}},
                           fit_start_time="2008-01-01", fit_end_time="2014-12-31")
    assert isinstance(proc, RobustZScoreNorm)
    assert proc.kwargs() == {"fit_start_time": "2008-01-01", "fit_end_time": "2014-12-31",
                             "fields_group": "feature", "clip_outlier": True}
    assert isinstance(build_processor({"class": "DropnaLabel"}), DropnaLabel)
    # fit times are only injected where the constructor takes them (Qlib check_transform_proc)
    assert isinstance(build_processor("CSRankNorm", "2008-01-01", "2014-12-31"), CSRankNorm)


def test_build_processor_errors_name_the_problem():
    with pytest.raises(ValueError, match="'MinMaxNormX'"):
        build_processor({"class": "MinMaxNormX"})
    with pytest.raises(ValueError, match=r"Fillna got unexpected kwargs \['fill'\]"):
        build_processor({"class": "Fillna", "kwargs": {"fill": 0}})
    with pytest.raises(ValueError, match="RobustZScoreNorm.*fit_start_time"):
        build_processor({"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature"}})
    with pytest.raises(ValueError, match="fields_group"):
        Fillna(fields_group="features")(one_day(F=[1.0]))


# --- Qlib goldens ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_input() -> pd.DataFrame:
    return pd.read_parquet(GOLDEN / "input.parquet").set_index(["datetime", "instrument"])


def fitted(case: str, df: pd.DataFrame) -> Processor | ProcessorChain:
    spec = META["cases"][case]
    if spec["class"] == "ProcessorChain":
        chain = ProcessorChain.from_config(spec["kwargs"]["processors"])
        chain.fit(df)
        return chain
    proc = build_processor(spec)
    proc.fit(df)
    return proc


def assert_matches_qlib(ours: pd.DataFrame, qlib: pd.DataFrame) -> None:
    assert ours.index.equals(qlib.index)
    assert list(ours.columns) == list(qlib.columns)
    assert list(ours.dtypes) == list(qlib.dtypes)
    a, b = ours.to_numpy(np.float64), qlib.to_numpy(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(a[np.isinf(b)], b[np.isinf(b)])
    ok = np.isfinite(b)
    bad = np.abs(a[ok] - b[ok]) > 1e-6 * np.maximum(1, np.abs(b[ok]))
    assert not bad.any(), f"{bad.sum()} values differ, e.g. ours {a[ok][bad][:3]} vs qlib {b[ok][bad][:3]}"


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_matches_qlib_processor_output(case: str, golden_input: pd.DataFrame):
    qlib = pd.read_parquet(GOLDEN / f"{case}.parquet").set_index(["datetime", "instrument"])
    ours = fitted(case, golden_input)(golden_input)
    if case == "DropnaLabel":
        assert ours.index.equals(qlib.index)
        return
    assert_matches_qlib(ours[list(qlib.columns)], qlib)
    if case in META["fitted"]:
        for name in ("mean_train", "std_train"):
            np.testing.assert_array_equal(getattr(fitted(case, golden_input), name),
                                          np.float32(META["fitted"][case][name]))


def test_filter_col_matches_qlib_column_order(golden_input: pd.DataFrame):
    shuffled = golden_input[list(reversed(META["filtercol_list"])) + ["LABEL0"]]  # list order != frame order
    qlib_order = META["filtercol_output_columns"]
    assert list(FilterCol(col_list=META["filtercol_list"])(golden_input).columns) == qlib_order
    assert list(FilterCol(col_list=["KLOW", "KLEN"])(shuffled).columns) == ["KLOW", "KLEN", "LABEL0"]


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_json_state_roundtrip_gives_identical_output(case: str, golden_input: pd.DataFrame):
    proc = fitted(case, golden_input)
    restored = roundtrip(proc)
    assert json.dumps(restored.to_state()) == json.dumps(proc.to_state())
    pd.testing.assert_frame_equal(restored(golden_input), proc(golden_input))
