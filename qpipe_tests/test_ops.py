"""Qlib operator semantics (qlib.md §2.2, §3.1 edge cases) with hand-derived expectations."""

import numpy as np
import pytest

from qpipe.features import ops

NAN = np.nan
FROM_START = np.array([0])


def col(*values: float) -> np.ndarray:
    """One instrument's float32 series as a [T, 1] panel column."""
    return np.array(values, dtype=np.float32)[:, None]


def flat(result: np.ndarray) -> list[float]:
    return result[:, 0].tolist()


def assert_series(result: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(result[:, 0], np.array(expected, dtype=np.float64), rtol=1e-12, atol=0)


# ---- Rank -------------------------------------------------------------------------------------


def test_rank_is_average_tie_percentile_of_today():
    assert_series(ops.rank(col(1, 2, 2), 3, FROM_START), [1.0, 1.0, 2.5 / 3])


def test_rank_of_a_constant_window_of_five_is_0_6():
    assert flat(ops.rank(col(7, 7, 7, 7, 7), 5, FROM_START))[-1] == 0.6


def test_rank_skips_missing_values_and_is_nan_when_today_is_missing():
    assert_series(ops.rank(col(3, NAN, 1, 2, NAN), 5, FROM_START), [1.0, NAN, 1 / 2, 2 / 3, NAN])


# ---- IdxMax / IdxMin --------------------------------------------------------------------------


def test_idxmax_counts_from_the_oldest_row_and_ties_go_to_the_oldest():
    # windows of 3: [4] [4,9] [4,9,9] [9,9,1] [9,1,9]
    assert_series(ops.idxmax(col(4, 9, 9, 1, 9), 3, FROM_START), [1, 2, 2, 1, 1])
    assert_series(ops.idxmin(col(4, 1, 1, 9, 1), 3, FROM_START), [1, 2, 2, 1, 1])


def test_idxmax_returns_the_first_missing_position_when_the_window_has_a_gap():
    # windows of 3: [5] [5,NaN] [5,NaN,8] [NaN,8,NaN] [8,NaN,9] [NaN,9,2] [9,2,1]
    x = col(5, NAN, 8, NAN, 9, 2, 1)
    assert_series(ops.idxmax(x, 3, FROM_START), [1, 2, 2, 1, 2, 1, 1])
    assert_series(ops.idxmin(x, 3, FROM_START), [1, 2, 2, 1, 2, 1, 3])


def test_idxmax_of_an_all_missing_window_is_nan():
    assert_series(ops.idxmax(col(NAN, NAN, 3), 2, FROM_START), [NAN, NAN, 1])  # [NaN, 3]: the NaN wins


def test_idxmax_rows_before_a_late_listing_are_not_missing_values():
    x = np.array([[NAN, 3], [NAN, 5], [2, 4], [6, 1]], dtype=np.float32)
    first = np.array([2, 0])
    result = ops.idxmax(x, 5, first)
    assert flat(result) == pytest.approx([NAN, NAN, 1, 2], nan_ok=True)  # partial windows from row 2
    assert result[:, 1].tolist() == [1, 2, 2, 2]


def test_imax_of_a_listing_day_is_one_over_d():
    assert flat(ops.idxmax(col(3), 5, FROM_START) / 5) == [0.2]


# ---- Mean / Sum / Max / Min / Std -------------------------------------------------------------


def test_ma60_on_listing_day_one_is_the_close_itself():
    x = np.array([[NAN, 10.5], [NAN, 11.0], [7.25, 12.0]], dtype=np.float32)
    result = ops.mean(x, 60, np.array([2, 0]))
    assert result[2, 0] == 7.25
    assert np.isnan(result[:2, 0]).all()
    assert_series(result[:, 1:], [10.5, 10.75, 33.5 / 3])


def test_suspended_rows_stay_inside_the_window_and_are_skipped():
    x = col(1, NAN, 3, NAN, NAN)
    assert_series(ops.mean(x, 3, FROM_START), [1, 1, 2, 3, 3])
    assert_series(ops.sum(x, 3, FROM_START), [1, 1, 4, 3, 3])
    assert_series(ops.max(x, 3, FROM_START), [1, 1, 3, 3, 3])
    assert_series(ops.min(x, 3, FROM_START), [1, 1, 1, 3, 3])
    assert_series(ops.mean(col(1, NAN, NAN, NAN), 3, FROM_START), [1, 1, 1, NAN])  # all-missing window


def test_infinities_are_missing_values_for_pandas_rolling_ops():
    x = col(1, np.inf, 3)
    assert_series(ops.mean(x, 3, FROM_START), [1, 1, 2])
    assert_series(ops.max(x, 3, FROM_START), [1, 1, 3])
    assert_series(ops.idxmax(x, 3, FROM_START), [1, 2, 2])  # inf is NaN to argmax after pandas' prep


def test_std_is_sample_std_nan_for_one_value_and_exactly_zero_when_constant():
    assert_series(ops.std(col(1, 2, 3, 4), 4, FROM_START), [NAN, np.sqrt(0.5), 1.0, np.sqrt(5 / 3)])
    constant = ops.std(col(0.1, 0.1, 0.1, 0.1, 0.1), 5, FROM_START)
    assert np.isnan(constant[0, 0]) and (constant[1:, 0] == 0.0).all()


def test_mean_of_a_comparison_counts_false_as_zero_so_cntp_is_zero_on_listing_day():
    close = np.array([[NAN, 5], [NAN, 6], [10, 6], [11, 5], [12, 7]], dtype=np.float32)
    first = np.array([2, 0])
    up = ops.gt(close, ops.ref(close, 1, first))
    result = ops.mean(up, 5, first)
    assert flat(result) == pytest.approx([NAN, NAN, 0.0, 1 / 2, 2 / 3], nan_ok=True)
    assert_series(result[:, 1:], [0.0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])


# ---- Quantile -----------------------------------------------------------------------------------


def test_quantile_interpolates_linearly_between_sorted_values():
    x = col(5, 1, 4, 2, 3)
    assert flat(ops.quantile(x, 5, 0.8, FROM_START))[-1] == pytest.approx(4.2, abs=1e-15)
    assert flat(ops.quantile(x, 5, 0.2, FROM_START))[-1] == pytest.approx(1.8, abs=1e-15)
    # window [1, NaN, 3, 10]: m = 3, h = 0.8 * 2 = 1.6 -> 3 + (10 - 3) * 0.6
    assert flat(ops.quantile(col(1, NAN, 3, 10), 4, 0.8, FROM_START)) == pytest.approx([1, 1, 2.6, 7.2])


def test_quantile_drops_values_that_leave_the_window():
    # windows of 2: [9] [9,1] [1,5] [5,NaN] [NaN,2]
    assert_series(ops.quantile(col(9, 1, 5, NAN, 2), 2, 0.5, FROM_START), [9, 5, 3, 5, 2])


# ---- Slope / Resi / Rsquare ---------------------------------------------------------------------


def test_regression_keeps_positions_across_a_missing_value():
    # last window of 4: y = [1, 3, NaN, 4] at positions 1, 2, 4 -> slope 13/14, intercept 1/2
    y = col(1, 3, NAN, 4)
    assert flat(ops.slope(y, 4, FROM_START))[-1] == pytest.approx(13 / 14, rel=1e-12)
    assert flat(ops.resi(y, 4, FROM_START))[-1] == pytest.approx(4 - (13 / 14 * 4 + 0.5), rel=1e-12)
    assert flat(ops.rsquare(y, 4, FROM_START))[-1] == pytest.approx((13 / 14) ** 2, rel=1e-12)


def test_regression_needs_two_points_and_resi_needs_today():
    y = col(2, NAN, 5, NAN)
    assert_series(ops.slope(y, 4, FROM_START), [NAN, NAN, 1.5, 1.5])  # slope ignores today's gap
    assert_series(ops.resi(y, 4, FROM_START), [NAN, NAN, 0.0, NAN])
    assert_series(ops.slope(y, 2, FROM_START), [NAN, NAN, NAN, NAN])  # never two points in 2 rows


def test_rsquare_is_nan_on_flat_windows_but_slope_is_not():
    y = col(10, 10, 10.00001, 10, 10.5)
    rsq = flat(ops.rsquare(y, 4, FROM_START))
    assert np.isnan(rsq[:4]).all()  # rolling std <= 2e-5
    assert not np.isnan(rsq[4])
    assert flat(ops.slope(y, 4, FROM_START))[3] != 0


# ---- Corr ---------------------------------------------------------------------------------------


def test_corr_uses_pairwise_complete_observations():
    a, b = col(1, 2, 3, 4), col(2, NAN, 1, 5)
    # pairs (1,2) (3,1) (4,5): r = (11/3) / sqrt(14/3 * 26/3)
    assert_series(ops.corr(a, b, 4, FROM_START), [NAN, NAN, -1.0, 11 / np.sqrt(364)])


def test_corr_is_nan_when_either_input_is_flat():
    moving, flat_series = col(1, 2, 4, 3), col(5, 5, 5, 5.00001)
    assert np.isnan(ops.corr(moving, flat_series, 4, FROM_START)).all()
    assert np.isnan(ops.corr(flat_series, moving, 4, FROM_START)).all()


# ---- element-wise -------------------------------------------------------------------------------


def test_greater_and_less_propagate_nan():
    a, b = col(1, NAN, 3), col(2, 0, NAN)
    assert flat(ops.greater(a, b)) == pytest.approx([2, NAN, NAN], nan_ok=True)
    assert flat(ops.less(a, b)) == pytest.approx([1, NAN, NAN], nan_ok=True)
    assert ops.greater(a, 0).dtype == np.float32


def test_comparisons_with_nan_are_false():
    a, b = col(1, NAN, 3), col(0, 0, NAN)
    assert flat(ops.gt(a, b)) == [True, False, False]
    assert flat(ops.lt(b, a)) == [True, False, False]


def test_log_abs_sign_keep_float32_and_ieee_results():
    assert flat(ops.log(col(1, 0, -1))) == pytest.approx([0, -np.inf, NAN], nan_ok=True)
    assert ops.log(col(2)).dtype == np.float32
    assert flat(ops.abs(col(-2, 3))) == [2, 3]
    assert ops.sign(col(-2, 0, 3)).tolist() == [[-1], [0], [1]]
    assert ops.sign(np.array([True, False])).dtype == np.float32


def test_ref_shifts_within_the_series_and_looks_ahead_for_negative_n():
    x = np.array([[NAN, 1], [NAN, 2], [3, 3], [4, 4]], dtype=np.float32)
    first = np.array([2, 0])
    assert ops.ref(x, 1, first)[:, 0].tolist() == pytest.approx([NAN, NAN, NAN, 3], nan_ok=True)
    assert ops.ref(x, 1, first)[:, 1].tolist() == pytest.approx([NAN, 1, 2, 3], nan_ok=True)
    assert ops.ref(x, -2, first)[:, 1].tolist() == pytest.approx([3, 4, NAN, NAN], nan_ok=True)
    assert ops.ref(x, 1, first).dtype == np.float32
    with pytest.raises(ValueError):
        ops.ref(x, 0, first)


def test_rolling_results_are_float64_and_windows_must_be_positive():
    assert ops.mean(col(1, 2), 2, FROM_START).dtype == np.float64
    with pytest.raises(ValueError):
        ops.mean(col(1, 2), 0, FROM_START)


def test_a_window_depends_only_on_its_rows_not_on_earlier_history():
    rng = np.random.default_rng(3)
    long = (100 + rng.standard_normal((400, 3)).cumsum(axis=0)).astype(np.float32)
    long[rng.random(long.shape) < 0.1] = NAN
    tail = long[-70:]
    first = np.zeros(3, dtype=np.int64)
    for op in (ops.mean, ops.std, ops.slope, ops.resi, ops.rsquare, ops.rank, ops.idxmax):
        np.testing.assert_array_equal(op(long, 60, first)[-10:], op(tail, 60, first)[-10:], err_msg=op.__name__)
    np.testing.assert_array_equal(
        ops.quantile(long, 60, 0.8, first)[-10:], ops.quantile(tail, 60, 0.8, first)[-10:]
    )
    np.testing.assert_array_equal(ops.corr(long, long[:, ::-1], 60, first)[-10:],
                                  ops.corr(tail, tail[:, ::-1], 60, first)[-10:])
