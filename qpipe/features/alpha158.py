"""Qlib's Alpha158 feature set (qlib.md §3.1): 9 kbar + 4 price + 29 rolling families x 5 windows.

Each formula below is the Qlib expression written with `ops`; the dtype flow (float32 element-wise
steps, float64 rolling results, one float32 cast at the end) is the one `ops` documents. Columns are
yielded one at a time in Qlib's order; families that share rolling intermediates (MAX/MIN/RSV,
IMAX/IMIN/IMXD, CNTP/CNTN/CNTD, SUMP/SUMN/SUMD, VSUMP/VSUMN/VSUMD) are computed together per window,
and only their not-yet-due float32 columns are held.
"""

from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import numpy as np

from qpipe.features import ops
from qpipe.features.panel import Panel

Column = tuple[str, np.ndarray]
Ops = Any  # the ``ops`` module (numba, CPU) or an ``ops_torch.TorchOps`` (a device): the same operator names

WINDOWS = (5, 10, 20, 30, 60)
KBAR_NAMES = ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2"]
PRICE_NAMES = ["OPEN0", "HIGH0", "LOW0", "VWAP0"]
ROLLING_FAMILIES = [
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV",
    "IMAX", "IMIN", "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD",
    "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
]  # fmt: skip
ALPHA158_NAMES: list[str] = KBAR_NAMES + PRICE_NAMES + [f"{f}{d}" for f in ROLLING_FAMILIES for d in WINDOWS]

# The 20 columns the Alpha158 deep-learning benchmarks keep (FilterCol): original Alpha158 order.
FILTER_COL_20: list[str] = [
    name
    for name in ALPHA158_NAMES
    if name in {
        "KLEN", "KLOW", "ROC60", "STD5", "RSQR5", "RSQR10", "RSQR20", "RSQR60", "RESI5", "RESI10",
        "CORR5", "CORR10", "CORR20", "CORR60", "CORD5", "CORD10", "CORD60", "VSTD5", "WVMA5", "WVMA60",
    }  # fmt: skip
]


# Each column as Qlib's Alpha158DL writes it (reference/qlib.md §3.1): the expressions a user's own feature set starts
# from (qpipe.features.expressions evaluates them to these columns' values, bit for bit).
_KBAR_AND_PRICE = {
    "KMID": "($close-$open)/$open", "KLEN": "($high-$low)/$open", "KMID2": "($close-$open)/($high-$low+1e-12)",
    "KUP": "($high-Greater($open, $close))/$open", "KUP2": "($high-Greater($open, $close))/($high-$low+1e-12)",
    "KLOW": "(Less($open, $close)-$low)/$open", "KLOW2": "(Less($open, $close)-$low)/($high-$low+1e-12)",
    "KSFT": "(2*$close-$high-$low)/$open", "KSFT2": "(2*$close-$high-$low)/($high-$low+1e-12)",
    "OPEN0": "$open/$close", "HIGH0": "$high/$close", "LOW0": "$low/$close", "VWAP0": "$vwap/$close",
}
_UP, _DOWN, _MOVE = "Greater({x}-Ref({x}, 1), 0)", "Greater(Ref({x}, 1)-{x}, 0)", "Abs({x}-Ref({x}, 1))"
_ROLLING_EXPRESSIONS = {
    "ROC": "Ref($close, {d})/$close", "MA": "Mean($close, {d})/$close", "STD": "Std($close, {d})/$close",
    "BETA": "Slope($close, {d})/$close", "RSQR": "Rsquare($close, {d})", "RESI": "Resi($close, {d})/$close",
    "MAX": "Max($high, {d})/$close", "MIN": "Min($low, {d})/$close", "QTLU": "Quantile($close, {d}, 0.8)/$close",
    "QTLD": "Quantile($close, {d}, 0.2)/$close", "RANK": "Rank($close, {d})",
    "RSV": "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)", "IMAX": "IdxMax($high, {d})/{d}",
    "IMIN": "IdxMin($low, {d})/{d}", "IMXD": "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}",
    "CORR": "Corr($close, Log($volume+1), {d})",
    "CORD": "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})",
    "CNTP": "Mean($close>Ref($close, 1), {d})", "CNTN": "Mean($close<Ref($close, 1), {d})",
    "CNTD": "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})",
    **{f"{prefix}P": f"Sum({_UP}, {{d}})/(Sum({_MOVE}, {{d}})+1e-12)" for prefix in ("SUM", "VSUM")},
    **{f"{prefix}N": f"Sum({_DOWN}, {{d}})/(Sum({_MOVE}, {{d}})+1e-12)" for prefix in ("SUM", "VSUM")},
    **{f"{prefix}D": f"(Sum({_UP}, {{d}})-Sum({_DOWN}, {{d}}))/(Sum({_MOVE}, {{d}})+1e-12)" for prefix in ("SUM", "VSUM")},
    "VMA": "Mean($volume, {d})/($volume+1e-12)", "VSTD": "Std($volume, {d})/($volume+1e-12)",
    "WVMA": "Std(Abs($close/Ref($close, 1)-1)*$volume, {d})/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {d})+1e-12)",
}
ALPHA158_EXPRESSIONS: dict[str, str] = {
    **_KBAR_AND_PRICE,
    **{f"{family}{d}": _ROLLING_EXPRESSIONS[family].format(d=d, x="$volume" if family.startswith("VSUM") else "$close")
       for family in ROLLING_FAMILIES for d in WINDOWS},
}


def alpha158_columns(panel: Panel, ops: Ops = ops) -> Iterator[Column]:
    """Yield (name, float32 [T, J]) for the 158 Alpha158 features, in Qlib's column order.

    ``ops`` is the operator table: the numba CPU kernels, or ``TorchOps(device)`` on a GPU.
    """
    x = _Inputs(panel, ops)
    yield from _evaluate(x, lambda: _kbar(x)).items()
    yield from _evaluate(x, lambda: _price(x)).items()
    held: dict[str, np.ndarray] = {}
    for family in ROLLING_FAMILIES:
        for d in WINDOWS:
            name = f"{family}{d}"
            if name not in held:
                group = _evaluate(x, lambda: _ROLLING[family](x, d))
                held.update((f"{sibling}{d}", values) for sibling, values in group.items())
            yield name, held.pop(name)


class _Inputs:
    """The panel's float32 fields where ``ops`` computes, and the element-wise series several families share."""

    def __init__(self, panel: Panel, ops: Ops) -> None:
        self.ops = ops
        self.open, self.high, self.low, self.close, self.vwap, self.volume = (
            ops.asarray(panel[name]) for name in ("open", "high", "low", "close", "vwap", "volume"))
        self.first = ops.asarray(panel.first)

    @cached_property
    def prev_close(self) -> np.ndarray:
        return self.ops.ref(self.close, 1, self.first)

    @cached_property
    def prev_volume(self) -> np.ndarray:
        return self.ops.ref(self.volume, 1, self.first)


def _evaluate(x: _Inputs, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run formulas with IEEE division (x/0 = ±inf, 0/0 = NaN, silently) and cast results to float32."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {name: x.ops.float32(values) for name, values in compute().items()}


def _kbar(x: _Inputs) -> dict[str, np.ndarray]:
    o, h, l, c = x.open, x.high, x.low, x.close  # noqa: E741 - Qlib's field letters
    spread = h - l + 1e-12
    upper = h - x.ops.greater(o, c)
    lower = x.ops.less(o, c) - l
    shift = 2 * c - h - l
    return {
        "KMID": (c - o) / o,
        "KLEN": (h - l) / o,
        "KMID2": (c - o) / spread,
        "KUP": upper / o,
        "KUP2": upper / spread,
        "KLOW": lower / o,
        "KLOW2": lower / spread,
        "KSFT": shift / o,
        "KSFT2": shift / spread,
    }


def _price(x: _Inputs) -> dict[str, np.ndarray]:
    return {"OPEN0": x.open / x.close, "HIGH0": x.high / x.close, "LOW0": x.low / x.close, "VWAP0": x.vwap / x.close}


def _extremes(x: _Inputs, d: int) -> dict[str, np.ndarray]:
    highest, lowest = x.ops.max(x.high, d, x.first), x.ops.min(x.low, d, x.first)
    return {"MAX": highest / x.close, "MIN": lowest / x.close, "RSV": (x.close - lowest) / (highest - lowest + 1e-12)}


def _extreme_days(x: _Inputs, d: int) -> dict[str, np.ndarray]:
    high_day, low_day = x.ops.idxmax(x.high, d, x.first), x.ops.idxmin(x.low, d, x.first)
    return {"IMAX": high_day / d, "IMIN": low_day / d, "IMXD": (high_day - low_day) / d}


def _up_down_days(x: _Inputs, d: int) -> dict[str, np.ndarray]:
    up = x.ops.mean(x.ops.gt(x.close, x.prev_close), d, x.first)
    down = x.ops.mean(x.ops.lt(x.close, x.prev_close), d, x.first)
    return {"CNTP": up, "CNTN": down, "CNTD": up - down}


def _up_down_moves(prefix: str, x: _Inputs, now: np.ndarray, before: np.ndarray, d: int) -> dict[str, np.ndarray]:
    """SUMP/SUMN/SUMD (prefix "SUM") and VSUMP/VSUMN/VSUMD (prefix "VSUM")."""
    up = x.ops.sum(x.ops.greater(now - before, 0), d, x.first)
    down = x.ops.sum(x.ops.greater(before - now, 0), d, x.first)
    total = x.ops.sum(x.ops.abs(now - before), d, x.first) + 1e-12
    return {f"{prefix}P": up / total, f"{prefix}N": down / total, f"{prefix}D": (up - down) / total}


def _close_moves(x: _Inputs, d: int) -> dict[str, np.ndarray]:
    return _up_down_moves("SUM", x, x.close, x.prev_close, d)


def _volume_moves(x: _Inputs, d: int) -> dict[str, np.ndarray]:
    return _up_down_moves("VSUM", x, x.volume, x.prev_volume, d)


def _weighted_volume(x: _Inputs) -> np.ndarray:
    """`Abs($close/Ref($close, 1)-1)*$volume`."""
    return x.ops.abs(x.close / x.prev_close - 1) * x.volume


_ROLLING: dict[str, Callable[[_Inputs, int], dict[str, np.ndarray]]] = {
    "ROC": lambda x, d: {"ROC": x.ops.ref(x.close, d, x.first) / x.close},
    "MA": lambda x, d: {"MA": x.ops.mean(x.close, d, x.first) / x.close},
    "STD": lambda x, d: {"STD": x.ops.std(x.close, d, x.first) / x.close},
    "BETA": lambda x, d: {"BETA": x.ops.slope(x.close, d, x.first) / x.close},
    "RSQR": lambda x, d: {"RSQR": x.ops.rsquare(x.close, d, x.first)},
    "RESI": lambda x, d: {"RESI": x.ops.resi(x.close, d, x.first) / x.close},
    "MAX": _extremes,
    "MIN": _extremes,
    "QTLU": lambda x, d: {"QTLU": x.ops.quantile(x.close, d, 0.8, x.first) / x.close},
    "QTLD": lambda x, d: {"QTLD": x.ops.quantile(x.close, d, 0.2, x.first) / x.close},
    "RANK": lambda x, d: {"RANK": x.ops.rank(x.close, d, x.first)},
    "RSV": _extremes,
    "IMAX": _extreme_days,
    "IMIN": _extreme_days,
    "IMXD": _extreme_days,
    "CORR": lambda x, d: {"CORR": x.ops.corr(x.close, x.ops.log(x.volume + 1), d, x.first)},
    "CORD": lambda x, d: {
        "CORD": x.ops.corr(x.close / x.prev_close, x.ops.log(x.volume / x.prev_volume + 1), d, x.first)
    },
    "CNTP": _up_down_days,
    "CNTN": _up_down_days,
    "CNTD": _up_down_days,
    "SUMP": _close_moves,
    "SUMN": _close_moves,
    "SUMD": _close_moves,
    "VMA": lambda x, d: {"VMA": x.ops.mean(x.volume, d, x.first) / (x.volume + 1e-12)},
    "VSTD": lambda x, d: {"VSTD": x.ops.std(x.volume, d, x.first) / (x.volume + 1e-12)},
    "WVMA": lambda x, d: {
        "WVMA": x.ops.std(_weighted_volume(x), d, x.first) / (x.ops.mean(_weighted_volume(x), d, x.first) + 1e-12)
    },
    "VSUMP": _volume_moves,
    "VSUMN": _volume_moves,
    "VSUMD": _volume_moves,
}
