"""Qlib's expression operators (qlib.md §2.2) on [T, J] panels: row t = trading day, column j = instrument.

Every function takes the instrument series as columns of a matrix plus ``first`` (int64 [J]): the row
where instrument j's series starts. Rows before ``first[j]`` do not exist for Qlib (it loads each
instrument from its first ``.bin`` row), so windows never reach them and their outputs are NaN;
rows from ``first[j]`` on are the series, with NaN on suspended days.

Dtype flow, as Qlib's pandas evaluation produces it (qlib.md §2.1), and as callers must compose:

* element-wise operators (``ref``, ``greater``, ``less``, ``gt``, ``lt``, ``log``, ``abs``, ``sign``
  and plain numpy ``+ - * /``) keep their input dtype: float32 fields give float32 results, and a
  python float constant such as ``1e-12`` does not promote (NEP 50);
* rolling operators return float64, like pandas rolling aggregations, and do not cast back;
* mixing a float64 rolling result with a float32 series computes in float64
  (``Mean($close, 5)/$close`` is ``float64 / float32 -> float64``);
* only the final value of an expression is cast to float32 (``LocalExpressionProvider``), which is the
  caller's job.

Rolling operators use ``rolling(N, min_periods=1)`` windows: the last N rows, cut at ``first``.
The pandas-backed ones (mean, sum, std, max, min, quantile, rank, idxmax/idxmin, corr) treat NaN and
+-inf alike as missing, because pandas' ``_prep_values`` turns inf into NaN before aggregating;
Slope/Rsquare/Resi come from Qlib's Cython and skip only NaN. Each window's statistic is computed from
the window's own values in a fixed order (oldest first), never from running sums carried along the
series, so a day's value depends only on its window: a panel holding 60 prior rows reproduces the
full-history value bit for bit.

The window-sum kernels (mean, sum, std, rank, regression, corr) parallelise over rows and vectorise
over instruments (``prange`` over t, inner loop over j along a contiguous row); max/min/idxmax/idxmin
walk each instrument with a monotonic queue and quantile with a sorted window (``prange`` over j).
Order statistics are exact whatever the traversal, so these stay history-independent too.
"""

import numpy as np
from numba import njit, prange

FLAT_STD_ATOL = 2e-5  # Rsquare/Corr are NaN where np.isclose(rolling std, 0, atol=2e-5)

_KERNEL = {"cache": True, "parallel": True, "error_model": "numpy"}


# ---------------------------------------------------------------------------------------------
# a panel's fields in, an expression's value out (``ops_torch.TorchOps`` has the same two on a device)
# ---------------------------------------------------------------------------------------------

asarray = np.asarray


def float32(values: np.ndarray) -> np.ndarray:
    """The final float32 cast of an expression's value (Qlib's LocalExpressionProvider)."""
    return values.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# element-wise operators (numpy; dtype preserved)
# ---------------------------------------------------------------------------------------------


def ref(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Ref(x, N)` = ``x.shift(N)`` within each instrument's series; N < 0 looks into the future.

    Values shifted in from before the series start (or beyond the panel) are NaN. Qlib's
    ``Ref(x, 0)`` quirk (the series' first value broadcast) is unused by Alpha158/360 and refused.
    """
    if n == 0:
        raise ValueError("Ref(x, 0) broadcasts the first value in Qlib; it is not supported")
    return _ref_kernel(np.ascontiguousarray(x), int(n), np.ascontiguousarray(first, dtype=np.int64))


def greater(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`Greater(a, b)` = ``np.maximum``: NaN propagates (not fmax)."""
    return np.maximum(a, b)


def less(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`Less(a, b)` = ``np.minimum``: NaN propagates (not fmin)."""
    return np.minimum(a, b)


def gt(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`a > b` = ``np.greater``: bool, any comparison with NaN is False."""
    return np.greater(a, b)


def lt(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`a < b` = ``np.less``: bool, any comparison with NaN is False."""
    return np.less(a, b)


def ge(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`a >= b` = ``np.greater_equal``: bool, any comparison with NaN is False."""
    return np.greater_equal(a, b)


def le(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`a <= b` = ``np.less_equal``: bool, any comparison with NaN is False."""
    return np.less_equal(a, b)


def eq(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`a == b` = ``np.equal``: bool, any comparison with NaN is False."""
    return np.equal(a, b)


def ne(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """`a != b` = ``np.not_equal``: bool, any comparison with NaN is True (IEEE)."""
    return np.not_equal(a, b)


def log(x: np.ndarray) -> np.ndarray:
    """`Log(x)` = ``np.log``: Log(0) = -inf, Log(<0) = NaN, no warnings (Qlib ignores them)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def abs(x: np.ndarray) -> np.ndarray:  # noqa: A001 - Qlib's operator name, used as ops.abs
    """`Abs(x)` = ``np.abs``."""
    return np.abs(x)


def sign(x: np.ndarray) -> np.ndarray:
    """`Sign(x)` = ``np.sign`` of x cast to float32 (Qlib casts so that bool input works)."""
    return np.sign(x.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# rolling operators (float64 results)
# ---------------------------------------------------------------------------------------------


def mean(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Mean(x, N)`: mean of the window's finite values; all missing -> NaN.

    A bool input counts False as 0 (``Mean($close>Ref($close,1), N)`` is 0 on a listing's first day).
    """
    return _sum_kernel(*_rolling_args(x, n, first), True)


def sum(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:  # noqa: A001 - Qlib's operator name
    """`Sum(x, N)`: sum of the window's finite values; all missing -> NaN."""
    return _sum_kernel(*_rolling_args(x, n, first), False)


def std(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Std(x, N)`: sample std (ddof=1) of the finite values; one value -> NaN, constant -> exactly 0."""
    return _std_kernel(*_rolling_args(x, n, first))


def max(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:  # noqa: A001 - Qlib's operator name
    """`Max(x, N)`: largest finite value of the window; all missing -> NaN."""
    return _extreme_kernel(*_rolling_args(x, n, first), 1.0)


def min(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:  # noqa: A001 - Qlib's operator name
    """`Min(x, N)`: smallest finite value of the window; all missing -> NaN."""
    return _extreme_kernel(*_rolling_args(x, n, first), -1.0)


def quantile(x: np.ndarray, n: int, q: float, first: np.ndarray) -> np.ndarray:
    """`Quantile(x, N, q)`: pandas linear interpolation over the m sorted finite values.

    With h = q·(m−1) and i = int(h): ``s[i]`` if h == i, else ``s[i] + (s[i+1] − s[i])·(h − i)``.
    """
    return _quantile_kernel(*_rolling_args(x, n, first), float(q))


def rank(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Rank(x, N)` = ``rolling(N).rank(pct=True)``: average rank of today's value among the
    window's finite values, divided by their count; today missing -> NaN.

    [1, 2, 2] -> 2.5/3 = 0.8333; a constant window of 5 -> 3/5 = 0.6.
    """
    return _rank_kernel(*_rolling_args(x, n, first))


def idxmax(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`IdxMax(x, N)` = ``rolling(N).apply(lambda w: w.argmax() + 1, raw=True)``.

    1-based position counted from the oldest row of the (possibly partial) window, ties -> oldest;
    any missing value in the window -> position of the first one (numpy's argmax on NaN);
    all missing -> NaN.
    """
    return _arg_extreme_kernel(*_rolling_args(x, n, first), 1.0)


def idxmin(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`IdxMin(x, N)`: as `idxmax` with argmin."""
    return _arg_extreme_kernel(*_rolling_args(x, n, first), -1.0)


def slope(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Slope(x, N)`: OLS slope of y on positions 1..N (newest = N); NaN values are dropped but the
    other values keep their positions. ``(nΣxy − ΣxΣy)/(nΣx² − (Σx)²)``; one point -> 0/0 = NaN.
    """
    return _regression_kernel(*_rolling_args(x, n, first), _SLOPE)


def resi(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Resi(x, N)`: residual of today's value, ``x_t − (slope·N + ȳ − slope·x̄)``; NaN if x_t is NaN
    or fewer than 2 points."""
    return _regression_kernel(*_rolling_args(x, n, first), _RESI)


def rsquare(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Rsquare(x, N)`: r² of the same regression, ``((nΣxy−ΣxΣy)/sqrt((nΣx²−(Σx)²)(nΣy²−(Σy)²)))²``,
    then NaN where ``np.isclose(Std(x, N), 0, atol=2e-5)`` (flat windows)."""
    out = _regression_kernel(*_rolling_args(x, n, first), _RSQUARE)
    out[_is_flat(x, n, first)] = np.nan
    return out


def corr(a: np.ndarray, b: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """`Corr(a, b, N)` = ``a.rolling(N).corr(b)`` over the pairs where both are finite:
    ``(mean(ab) − mean(a)·mean(b))·k/(k−1) / sqrt(var(a)·var(b))`` (ddof 1, k pairs; k < 2 -> NaN),
    then NaN where either input's own ``Std(·, N)`` is close to 0 (atol 2e-5)."""
    a_values, n, first = _rolling_args(a, n, first)
    out = _corr_kernel(a_values, _values(b), n, first)
    out[_is_flat(a, n, first) | _is_flat(b, n, first)] = np.nan
    return out


def _is_flat(x: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """Qlib's flat-window test for Rsquare and Corr: ``np.isclose(Std(x, N), 0, atol=2e-5)``."""
    return np.isclose(std(x, n, first), 0, atol=FLAT_STD_ATOL)


def _values(x: np.ndarray) -> np.ndarray:
    """Kernel input: a C-contiguous float matrix (bool becomes 0/1 float32, as pandas sees it)."""
    return np.ascontiguousarray(x, dtype=np.float32 if x.dtype == np.bool_ else None)


def _rolling_args(x: np.ndarray, n: int, first: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    if n < 1:
        raise ValueError(f"rolling window must be >= 1 (expanding N=0 is unsupported), got {n}")
    return _values(x), int(n), np.ascontiguousarray(first, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# kernels; a rolling one gives out[t, j] (float64) from rows max(t-n+1, first[j]) .. t of column j
# ---------------------------------------------------------------------------------------------

_SLOPE, _RESI, _RSQUARE = 0, 1, 2


@njit(**_KERNEL)
def _sum_kernel(x, n, first, average):
    t_len, j_len = x.shape
    out = np.empty((t_len, j_len))
    for t in prange(t_len):
        total = out[t]
        total[:] = 0.0
        count = np.zeros(j_len)
        for r in range(t - n + 1 if t >= n else 0, t + 1):
            for j in range(j_len):
                v = np.float64(x[r, j])
                ok = (r >= first[j]) & np.isfinite(v)
                total[j] += v if ok else 0.0
                count[j] += 1.0 if ok else 0.0
        for j in range(j_len):
            if count[j] == 0.0:
                total[j] = np.nan
            elif average:
                total[j] /= count[j]
    return out


@njit(**_KERNEL)
def _std_kernel(x, n, first):
    t_len, j_len = x.shape
    out = np.empty((t_len, j_len))
    for t in prange(t_len):
        lo = t - n + 1 if t >= n else 0
        total = np.zeros(j_len)
        count = np.zeros(j_len)
        for r in range(lo, t + 1):
            for j in range(j_len):
                v = np.float64(x[r, j])
                ok = (r >= first[j]) & np.isfinite(v)
                total[j] += v if ok else 0.0
                count[j] += 1.0 if ok else 0.0
        centre = total / count
        squares = out[t]
        squares[:] = 0.0
        for r in range(lo, t + 1):
            for j in range(j_len):
                v = np.float64(x[r, j])
                ok = (r >= first[j]) & np.isfinite(v)
                d = v - centre[j]
                squares[j] += d * d if ok else 0.0
        for j in range(j_len):
            squares[j] = np.sqrt(squares[j] / (count[j] - 1.0)) if count[j] > 1.0 else np.nan
    return out


@njit(cache=True)  # one memory-bound pass: threads would only add synchronisation
def _ref_kernel(x, n, first):
    t_len, j_len = x.shape
    out = np.empty_like(x)
    for t in range(t_len):
        source = t - n
        if source < 0 or source >= t_len:
            out[t] = np.nan
            continue
        for j in range(j_len):
            out[t, j] = x[source, j] if (source >= first[j]) & (t >= first[j]) else np.nan
    return out


@njit(**_KERNEL)
def _extreme_kernel(x, n, first, sign):
    """max (sign=1) or min (sign=-1) of the finite values.

    Per instrument, a queue holds the window's rows whose value no later row beats (strictly), so the
    front is the oldest row holding the extreme.
    """
    t_len, j_len = x.shape
    out = np.full((t_len, j_len), np.nan)
    for j in prange(j_len):
        queue = np.empty(t_len, dtype=np.int64)
        head = tail = 0
        for t in range(first[j], t_len):
            if head < tail and queue[head] == t - n:
                head += 1
            v = sign * np.float64(x[t, j])
            if np.isfinite(v):
                while head < tail and sign * np.float64(x[queue[tail - 1], j]) < v:
                    tail -= 1
                queue[tail] = t
                tail += 1
            if head < tail:
                out[t, j] = x[queue[head], j]
    return out


@njit(**_KERNEL)
def _arg_extreme_kernel(x, n, first, sign):
    """argmax (sign=1) / argmin (sign=-1) + 1 with numpy's rule: the first missing value wins.

    Same queue as `_extreme_kernel` (its front is the oldest extreme), plus the window's missing rows.
    """
    t_len, j_len = x.shape
    out = np.full((t_len, j_len), np.nan)
    for j in prange(j_len):
        queue = np.empty(t_len, dtype=np.int64)
        missing = np.empty(t_len, dtype=np.int64)
        head = tail = missing_head = missing_tail = 0
        for t in range(first[j], t_len):
            if head < tail and queue[head] == t - n:
                head += 1
            if missing_head < missing_tail and missing[missing_head] == t - n:
                missing_head += 1
            v = sign * np.float64(x[t, j])
            if np.isfinite(v):
                while head < tail and sign * np.float64(x[queue[tail - 1], j]) < v:
                    tail -= 1
                queue[tail] = t
                tail += 1
            else:
                missing[missing_tail] = t
                missing_tail += 1
            start = t - n + 1 if t - n + 1 > first[j] else first[j]
            if head < tail:
                row = missing[missing_head] if missing_head < missing_tail else queue[head]
                out[t, j] = row - start + 1
    return out


@njit(**_KERNEL)
def _rank_kernel(x, n, first):
    t_len, j_len = x.shape
    out = np.empty((t_len, j_len))
    for t in prange(t_len):
        less = np.zeros(j_len)
        equal = np.zeros(j_len)
        count = np.zeros(j_len)
        for r in range(t - n + 1 if t >= n else 0, t + 1):
            for j in range(j_len):
                v = np.float64(x[r, j])
                today = np.float64(x[t, j])
                ok = (r >= first[j]) & np.isfinite(v)
                count[j] += 1.0 if ok else 0.0
                less[j] += 1.0 if ok & (v < today) else 0.0
                equal[j] += 1.0 if ok & (v == today) else 0.0
        row = out[t]
        for j in range(j_len):
            today = np.float64(x[t, j])
            if (t >= first[j]) & np.isfinite(today):
                row[j] = (less[j] + (equal[j] + 1.0) / 2.0) / count[j]
            else:
                row[j] = np.nan
    return out


@njit(**_KERNEL)
def _regression_kernel(y, n, first, kind):
    """Qlib's rolling.pyx Slope/Resi/Rsquare evaluated on each window's own sums."""
    t_len, j_len = y.shape
    out = np.empty((t_len, j_len))
    for t in prange(t_len):
        count = np.zeros(j_len)
        sx = np.zeros(j_len)
        sxx = np.zeros(j_len)
        sy = np.zeros(j_len)
        sxy = np.zeros(j_len)
        syy = np.zeros(j_len)
        for r in range(t - n + 1 if t >= n else 0, t + 1):
            p = np.float64(n - (t - r))  # position: oldest slot = 1, today = N
            for j in range(j_len):
                v = np.float64(y[r, j])
                ok = (r >= first[j]) & (v == v)
                w = 1.0 if ok else 0.0
                v = v if ok else 0.0
                count[j] += w
                sx[j] += w * p
                sxx[j] += w * p * p
                sy[j] += v
                sxy[j] += p * v
                syy[j] += v * v
        row = out[t]
        for j in range(j_len):
            k = count[j]
            numerator = k * sxy[j] - sx[j] * sy[j]
            x_spread = k * sxx[j] - sx[j] * sx[j]
            if t < first[j]:
                row[j] = np.nan
            elif kind == _SLOPE:
                row[j] = numerator / x_spread
            elif kind == _RESI:
                b = numerator / x_spread
                intercept = sy[j] / k - b * (sx[j] / k)
                row[j] = np.float64(y[t, j]) - (b * n + intercept)
            else:
                rvalue = numerator / np.sqrt(x_spread * (k * syy[j] - sy[j] * sy[j]))
                row[j] = rvalue * rvalue
    return out


@njit(**_KERNEL)
def _corr_kernel(a, b, n, first):
    """pandas Rolling.corr: pairwise-complete means and ddof-1 variances of the window."""
    t_len, j_len = a.shape
    out = np.empty((t_len, j_len))
    for t in prange(t_len):
        lo = t - n + 1 if t >= n else 0
        count = np.zeros(j_len)
        sa = np.zeros(j_len)
        sb = np.zeros(j_len)
        sab = np.zeros(j_len)
        for r in range(lo, t + 1):
            for j in range(j_len):
                u = np.float64(a[r, j])
                v = np.float64(b[r, j])
                ok = (r >= first[j]) & np.isfinite(u) & np.isfinite(v)
                count[j] += 1.0 if ok else 0.0
                sa[j] += u if ok else 0.0
                sb[j] += v if ok else 0.0
                sab[j] += u * v if ok else 0.0
        mean_a = sa / count
        mean_b = sb / count
        ssa = np.zeros(j_len)
        ssb = np.zeros(j_len)
        for r in range(lo, t + 1):
            for j in range(j_len):
                u = np.float64(a[r, j])
                v = np.float64(b[r, j])
                ok = (r >= first[j]) & np.isfinite(u) & np.isfinite(v)
                du = u - mean_a[j]
                dv = v - mean_b[j]
                ssa[j] += du * du if ok else 0.0
                ssb[j] += dv * dv if ok else 0.0
        row = out[t]
        for j in range(j_len):
            k = count[j]
            if k < 2.0:
                row[j] = np.nan
            else:
                covariance = (sab[j] / k - mean_a[j] * mean_b[j]) * (k / (k - 1.0))
                row[j] = covariance / np.sqrt((ssa[j] / (k - 1.0)) * (ssb[j] / (k - 1.0)))
    return out


@njit(**_KERNEL)
def _quantile_kernel(x, n, first, q):
    """Walk each instrument keeping its window's finite values sorted (exact: a multiset)."""
    t_len, j_len = x.shape
    out = np.full((t_len, j_len), np.nan)
    for j in prange(j_len):
        window = np.empty(n)
        m = 0
        for t in range(first[j], t_len):
            leaving = np.float64(x[t - n, j]) if t - n >= first[j] else np.nan
            m = _sorted_slide(window, m, leaving, np.float64(x[t, j]))
            if m == 1:
                out[t, j] = window[0]
            elif m > 1:
                h = q * (m - 1)
                i = int(h)
                if h == i:
                    out[t, j] = window[i]
                else:
                    out[t, j] = window[i] + (window[i + 1] - window[i]) * (h - i)
    return out


@njit(cache=True)
def _sorted_slide(window, m, leaving, entering):
    """Replace `leaving` by `entering` in the sorted window[:m], returning the new m.

    Missing values are never kept. The slot of the leaving value moves to where the entering one
    belongs, so only the values in between shift.
    """
    if np.isfinite(leaving):
        lo, hi = 0, m - 1  # binary search for a copy of `leaving`, which is in the window
        while lo < hi:
            mid = (lo + hi) // 2
            if window[mid] < leaving:
                lo = mid + 1
            else:
                hi = mid
        slot = lo
    elif np.isfinite(entering):
        slot = m
        m += 1
    else:
        return m
    if not np.isfinite(entering):
        for k in range(slot, m - 1):
            window[k] = window[k + 1]
        return m - 1
    while slot + 1 < m and window[slot + 1] < entering:
        window[slot] = window[slot + 1]
        slot += 1
    while slot > 0 and window[slot - 1] > entering:
        window[slot] = window[slot - 1]
        slot -= 1
    window[slot] = entering
    return m
