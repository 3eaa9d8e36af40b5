"""An independent, slow re-implementation of Qlib's expression engine, used by tests as the oracle.

It evaluates Qlib's own expression strings (``Alpha158DL``/``Alpha360DL.get_feature_config``) one
instrument at a time with pandas, as ``qlib/data/ops.py`` does (qlib.md §2): float32 fields,
numpy/pandas element-wise steps, pandas ``rolling(N, min_periods=1)`` aggregations, ``rolling.apply``
for IdxMax/IdxMin, a line-by-line port of ``qlib/data/_libs/rolling.pyx`` for Slope/Rsquare/Resi, and a
float32 cast of every final value. It shares no code with ``qpipe.features.ops``.
"""

import re
from collections import deque

import numpy as np
import pandas as pd

from qpipe.features.panel import Panel

WINDOWS = (5, 10, 20, 30, 60)


def alpha158_expressions() -> list[tuple[str, str]]:
    """(name, expression) pairs of Alpha158DL's default config, in its order."""
    kbar = [
        ("KMID", "($close-$open)/$open"),
        ("KLEN", "($high-$low)/$open"),
        ("KMID2", "($close-$open)/($high-$low+1e-12)"),
        ("KUP", "($high-Greater($open, $close))/$open"),
        ("KUP2", "($high-Greater($open, $close))/($high-$low+1e-12)"),
        ("KLOW", "(Less($open, $close)-$low)/$open"),
        ("KLOW2", "(Less($open, $close)-$low)/($high-$low+1e-12)"),
        ("KSFT", "(2*$close-$high-$low)/$open"),
        ("KSFT2", "(2*$close-$high-$low)/($high-$low+1e-12)"),
    ]
    price = [(f"{field}0", f"${field.lower()}/$close") for field in ("OPEN", "HIGH", "LOW", "VWAP")]
    up = "Sum(Greater({x}-Ref({x}, 1), 0), {d})"
    down = "Sum(Greater(Ref({x}, 1)-{x}, 0), {d})"
    moves = "(Sum(Abs({x}-Ref({x}, 1)), {d})+1e-12)"
    weighted = "Abs($close/Ref($close, 1)-1)*$volume"
    rolling = [
        ("ROC", "Ref($close, {d})/$close"),
        ("MA", "Mean($close, {d})/$close"),
        ("STD", "Std($close, {d})/$close"),
        ("BETA", "Slope($close, {d})/$close"),
        ("RSQR", "Rsquare($close, {d})"),
        ("RESI", "Resi($close, {d})/$close"),
        ("MAX", "Max($high, {d})/$close"),
        ("MIN", "Min($low, {d})/$close"),
        ("QTLU", "Quantile($close, {d}, 0.8)/$close"),
        ("QTLD", "Quantile($close, {d}, 0.2)/$close"),
        ("RANK", "Rank($close, {d})"),
        ("RSV", "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)"),
        ("IMAX", "IdxMax($high, {d})/{d}"),
        ("IMIN", "IdxMin($low, {d})/{d}"),
        ("IMXD", "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}"),
        ("CORR", "Corr($close, Log($volume+1), {d})"),
        ("CORD", "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})"),
        ("CNTP", "Mean($close>Ref($close, 1), {d})"),
        ("CNTN", "Mean($close<Ref($close, 1), {d})"),
        ("CNTD", "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})"),
        ("SUMP", f"{up}/{moves}"),
        ("SUMN", f"{down}/{moves}"),
        ("SUMD", f"({up}-{down})/{moves}"),
        ("VMA", "Mean($volume, {d})/($volume+1e-12)"),
        ("VSTD", "Std($volume, {d})/($volume+1e-12)"),
        ("WVMA", f"Std({weighted}, {{d}})/(Mean({weighted}, {{d}})+1e-12)"),
        ("VSUMP", f"{up}/{moves}"),
        ("VSUMN", f"{down}/{moves}"),
        ("VSUMD", f"({up}-{down})/{moves}"),
    ]
    expressions = kbar + price
    for family, template in rolling:
        x = "$volume" if family.startswith("VSUM") else "$close"
        expressions += [(f"{family}{d}", template.format(x=x, d=d)) for d in WINDOWS]
    return expressions


def alpha360_expressions() -> list[tuple[str, str]]:
    """(name, expression) pairs of Alpha360DL, in its order."""
    expressions = []
    for field in ("close", "open", "high", "low", "vwap"):
        expressions += [(f"{field.upper()}{i}", f"Ref(${field}, {i})/$close") for i in range(59, 0, -1)]
        expressions.append((f"{field.upper()}0", f"${field}/$close"))
    expressions += [(f"VOLUME{i}", f"Ref($volume, {i})/($volume+1e-12)") for i in range(59, 0, -1)]
    expressions.append(("VOLUME0", "$volume/($volume+1e-12)"))
    return expressions


LABEL_EXPRESSION = "Ref($close, -2)/Ref($close, -1) - 1"


def evaluate_panel(expression: str, panel: Panel) -> np.ndarray:
    """float32 [T, J]: the expression on each instrument's own series (rows from ``first`` on)."""
    out = np.full(panel.shape, np.nan, dtype=np.float32)
    for j, start in enumerate(panel.first):
        fields = {name: pd.Series(values[start:, j]) for name, values in panel.fields.items()}
        if len(fields["close"]):
            out[start:, j] = evaluate(expression, fields).to_numpy()
    return out


def evaluate(expression: str, fields: dict[str, pd.Series]) -> pd.Series:
    """One instrument: ``$name`` reads a float32 field, the final value is cast to float32."""
    code = re.sub(r"\$(\w+)", r'_F["\1"]', expression)
    with np.errstate(divide="ignore", invalid="ignore"):
        return eval(code, {**_OPERATORS, "_F": fields}).astype(np.float32)  # noqa: S307 - fixed test strings


def _rolling(x: pd.Series, n: int):
    return x.rolling(n, min_periods=1)


def _masked_flat(result: pd.Series, *inputs: pd.Series, n: int) -> pd.Series:
    """NaN where any input's rolling std is np.isclose to 0 with atol 2e-5 (Rsquare, Corr)."""
    flat = np.zeros(len(result), dtype=bool)
    for x in inputs:
        flat |= np.isclose(_rolling(x, n).std(), 0, atol=2e-05)
    result = result.copy()
    result.loc[flat] = np.nan
    return result


def _cython_regression(values: np.ndarray, window: int, kind: str) -> np.ndarray:
    """Port of rolling.pyx's Slope/Resi/Rsquare ``update``: a deque pre-filled with NaN, running sums."""
    barv = deque([np.nan] * window)
    na_count = window
    i_sum = x_sum = x2_sum = y_sum = y2_sum = xy_sum = 0.0
    out = np.empty(len(values))
    for k, val in enumerate(values.astype(np.float64)):
        barv.append(val)
        xy_sum = xy_sum - y_sum
        x2_sum = x2_sum + i_sum - 2 * x_sum
        x_sum = x_sum - i_sum
        front = barv[0]
        if not np.isnan(front):
            i_sum -= 1
            y_sum -= front
            y2_sum -= front * front
        else:
            na_count -= 1
        barv.popleft()
        if np.isnan(val):
            na_count += 1
        else:
            i_sum += 1
            x_sum += window
            x2_sum += window * window
            y_sum += val
            y2_sum += val * val
            xy_sum += window * val
        n = window - na_count
        with np.errstate(divide="ignore", invalid="ignore"):
            numerator = np.float64(n * xy_sum - x_sum * y_sum)
            if kind == "slope":
                out[k] = numerator / (n * x2_sum - x_sum * x_sum)
            elif kind == "resi":
                slope = numerator / (n * x2_sum - x_sum * x_sum)
                interp = np.float64(y_sum) / n - slope * (np.float64(x_sum) / n)
                out[k] = val - (slope * window + interp)
            else:
                rvalue = numerator / np.sqrt((n * x2_sum - x_sum * x_sum) * (n * y2_sum - y_sum * y_sum))
                out[k] = rvalue * rvalue
    return out


def _regression(kind: str):
    def operator(x: pd.Series, n: int) -> pd.Series:
        result = pd.Series(_cython_regression(x.to_numpy(), n, kind), index=x.index)
        return _masked_flat(result, x, n=n) if kind == "rsquare" else result

    return operator


_OPERATORS = {
    "Ref": lambda x, n: x.shift(n),
    "Mean": lambda x, n: _rolling(x, n).mean(),
    "Sum": lambda x, n: _rolling(x, n).sum(),
    "Std": lambda x, n: _rolling(x, n).std(),
    "Max": lambda x, n: _rolling(x, n).max(),
    "Min": lambda x, n: _rolling(x, n).min(),
    "Quantile": lambda x, n, q: _rolling(x, n).quantile(q),
    "Rank": lambda x, n: _rolling(x, n).rank(pct=True),
    "IdxMax": lambda x, n: _rolling(x, n).apply(lambda w: w.argmax() + 1, raw=True),
    "IdxMin": lambda x, n: _rolling(x, n).apply(lambda w: w.argmin() + 1, raw=True),
    "Slope": _regression("slope"),
    "Resi": _regression("resi"),
    "Rsquare": _regression("rsquare"),
    "Corr": lambda a, b, n: _masked_flat(_rolling(a, n).corr(b), a, b, n=n),
    "Greater": np.maximum,
    "Less": np.minimum,
    "Abs": np.abs,
    "Log": np.log,
}
