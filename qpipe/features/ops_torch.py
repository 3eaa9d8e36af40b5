"""Qlib's expression operators on torch tensors: the `ops` table, for a GPU.

The same operators, arguments and dtype flow as `qpipe.features.ops` (read its docstring), evaluated on
[T, J] tensors on one device. Each rolling statistic is accumulated in the numba kernels' order: the
window's rows from the oldest to today, one vectorised step per row, with the same float64 operations
(no fused multiply-adds, no tree reductions), and ``log`` is numpy's own. Sums, counts, order statistics
and the flat-window masks therefore come out as the CPU kernels' do (bit for bit on the CPU's torch); what
may differ on a GPU is the last bit of its ``sqrt`` and division where not IEEE-rounded, which is why the
contract is equal NaN masks and values to ``TOLERANCE`` (``disagreement``).

``TorchOps(device)`` is used like the ``ops`` module: ``alpha158_columns(panel, TorchOps("cuda"))``.
"""

import numpy as np
import torch

from qpipe.features import ops
from qpipe.features.ops import FLAT_STD_ATOL

Tensor = torch.Tensor
TOLERANCE = 1e-6  # finite values: |torch - cpu| <= TOLERANCE * max(1, |cpu|)


def disagreement(cpu: np.ndarray, other: np.ndarray) -> float:
    """The largest gap ``|other - cpu| / max(1, |cpu|)`` over finite values; inf when the dtypes, shapes, NaN
    masks or infinities differ."""
    if other.dtype != cpu.dtype or other.shape != cpu.shape:
        return float("inf")
    if cpu.dtype == np.bool_:
        return 0.0 if np.array_equal(cpu, other) else float("inf")
    a, b = cpu.astype(np.float64), other.astype(np.float64)
    infinite = np.isinf(a) | np.isinf(b)
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(a[infinite], b[infinite]):
        return float("inf")
    finite = np.isfinite(a)
    return float((np.abs(a[finite] - b[finite]) / np.maximum(1.0, np.abs(a[finite]))).max(initial=0.0))


class TorchOps:
    """The operator table on ``device``; inputs come from numpy panels, results go back as float32 numpy."""

    def __init__(self, device: str | torch.device = "cuda") -> None:
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"TorchOps({str(self.device)!r})"

    # -- moving a panel's fields in and an expression's value out ----------------------------------

    def asarray(self, values: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

    def float32(self, values: Tensor) -> np.ndarray:
        """The final float32 cast of an expression's value (Qlib's LocalExpressionProvider), as a host array."""
        return values.to(torch.float32).cpu().numpy()

    # -- element-wise operators (dtype preserved) ----------------------------------------------------

    def ref(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        """`Ref(x, N)`: ``x.shift(N)`` within each series; NaN from before the series start or the panel."""
        if n == 0:
            raise ValueError("Ref(x, 0) broadcasts the first value in Qlib; it is not supported")
        t_len = x.shape[0]
        out = torch.full_like(x, float("nan"))
        if abs(n) >= t_len:
            return out
        rows = self._rows(t_len)
        if n > 0:
            out[n:] = x[:-n]
        else:
            out[:n] = x[-n:]
        inside = (rows - n >= first) & (rows >= first) & (rows - n < t_len)
        return torch.where(inside, out, float("nan"))

    def greater(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.maximum(a, self._like(a, b))

    def less(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.minimum(a, self._like(a, b))

    def gt(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.gt(a, b)

    def lt(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.lt(a, b)

    def ge(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.ge(a, b)

    def le(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.le(a, b)

    def eq(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.eq(a, b)

    def ne(self, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.ne(a, b)

    def log(self, x: Tensor) -> Tensor:
        """numpy's own log, on the host: float32 logs differ by an ulp between libraries (numpy's, torch's CPU and
        CUDA ones), which a 5-day CORR of Log(volume) amplified to 2e-5. A few [T, J] panels cross the bus."""
        return self.asarray(ops.log(x.cpu().numpy()))

    def abs(self, x: Tensor) -> Tensor:
        return torch.abs(x)

    def sign(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        return torch.where(torch.isnan(x), x, torch.sign(x))  # torch.sign(NaN) is 0; numpy's is NaN

    # -- rolling operators (float64 results) --------------------------------------------------------

    def mean(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        total, count = self._sums(x, n, first)
        return torch.where(count == 0, float("nan"), total / count)

    def sum(self, x: Tensor, n: int, first: Tensor) -> Tensor:  # noqa: A003 - Qlib's operator name
        total, count = self._sums(x, n, first)
        return torch.where(count == 0, float("nan"), total)

    def std(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        total, count = self._sums(x, n, first)
        centre = total / count
        squares = torch.zeros_like(total)
        for v, ok in self._window(x, n, first):
            d = v - centre
            squares += torch.where(ok, d * d, 0.0)
        return torch.where(count > 1, torch.sqrt(squares / (count - 1.0)), float("nan"))

    def max(self, x: Tensor, n: int, first: Tensor) -> Tensor:  # noqa: A003 - Qlib's operator name
        return self._extreme(x, n, first, 1.0)

    def min(self, x: Tensor, n: int, first: Tensor) -> Tensor:  # noqa: A003 - Qlib's operator name
        return self._extreme(x, n, first, -1.0)

    def quantile(self, x: Tensor, n: int, q: float, first: Tensor) -> Tensor:
        """Linear interpolation over the sorted finite values, as pandas (see `ops.quantile`)."""
        values = torch.stack([torch.where(ok, v, float("inf")) for v, ok in self._window(x, n, first)], dim=-1)
        ordered = values.sort(dim=-1).values  # missing (+inf) last; the finite values sorted in front
        m = torch.isfinite(ordered).sum(dim=-1).to(torch.float64)
        h = q * (m - 1.0)
        i = torch.floor(h)
        lower = ordered.gather(-1, i.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
        upper = ordered.gather(-1, (i + 1).clamp(min=0, max=ordered.shape[-1] - 1).long().unsqueeze(-1)).squeeze(-1)
        out = torch.where(h == i, lower, lower + (upper - lower) * (h - i))
        return torch.where(m == 0, float("nan"), torch.where(m == 1, ordered[..., 0], out))

    def rank(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        today = x.to(torch.float64)
        less = torch.zeros_like(today)
        equal = torch.zeros_like(today)
        count = torch.zeros_like(today)
        for v, ok in self._window(x, n, first):
            count += ok.to(torch.float64)
            less += (ok & (v < today)).to(torch.float64)
            equal += (ok & (v == today)).to(torch.float64)
        scored = (self._rows(x.shape[0]) >= first) & torch.isfinite(today)
        return torch.where(scored, (less + (equal + 1.0) / 2.0) / count, float("nan"))

    def idxmax(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        return self._arg_extreme(x, n, first, 1.0)

    def idxmin(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        return self._arg_extreme(x, n, first, -1.0)

    def slope(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        return self._regression(x, n, first, "slope")

    def resi(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        return self._regression(x, n, first, "resi")

    def rsquare(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        out = self._regression(x, n, first, "rsquare")
        return torch.where(self._is_flat(x, n, first), float("nan"), out)

    def corr(self, a: Tensor, b: Tensor, n: int, first: Tensor) -> Tensor:
        def pairs():
            for (u, ok_u), (v, ok_v) in zip(self._window(a, n, first), self._window(b, n, first)):
                yield u, v, ok_u & ok_v

        zeros = torch.zeros(a.shape, dtype=torch.float64, device=a.device)
        count, sa, sb, sab = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
        for u, v, ok in pairs():
            count += ok.to(torch.float64)
            sa += torch.where(ok, u, 0.0)
            sb += torch.where(ok, v, 0.0)
            sab += torch.where(ok, u * v, 0.0)
        mean_a, mean_b = sa / count, sb / count
        ssa, ssb = zeros.clone(), zeros.clone()
        for u, v, ok in pairs():
            du, dv = u - mean_a, v - mean_b
            ssa += torch.where(ok, du * du, 0.0)
            ssb += torch.where(ok, dv * dv, 0.0)
        covariance = (sab / count - mean_a * mean_b) * (count / (count - 1.0))
        out = covariance / torch.sqrt((ssa / (count - 1.0)) * (ssb / (count - 1.0)))
        flat = self._is_flat(a, n, first) | self._is_flat(b, n, first)
        return torch.where((count < 2.0) | flat, float("nan"), out)

    # -- the window walk every rolling operator shares ------------------------------------------------

    def _window(self, x: Tensor, n: int, first: Tensor, finite: bool = True):
        """(values as float64, usable) for each row of the window, oldest first: row t - s for s = n-1 .. 0.

        A row is usable when it is inside the series (t - s >= first[j]) and its value is finite
        (``finite=False``: not NaN, as Qlib's Cython regressions test).
        """
        if n < 1:
            raise ValueError(f"rolling window must be >= 1 (expanding N=0 is unsupported), got {n}")
        values = x.to(torch.float64)
        t_len = values.shape[0]
        rows = self._rows(t_len)
        for s in range(min(n, t_len) - 1, -1, -1):
            shifted = torch.cat([values.new_full((s, values.shape[1]), float("nan")), values[:t_len - s]])
            present = ~torch.isnan(shifted) if not finite else torch.isfinite(shifted)
            yield shifted, (rows - s >= first) & present

    def _sums(self, x: Tensor, n: int, first: Tensor) -> tuple[Tensor, Tensor]:
        total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        count = torch.zeros_like(total)
        for v, ok in self._window(x, n, first):
            total += torch.where(ok, v, 0.0)
            count += ok.to(torch.float64)
        return total, count

    def _extreme(self, x: Tensor, n: int, first: Tensor, sign: float) -> Tensor:
        best = torch.full(x.shape, -float("inf"), dtype=torch.float64, device=x.device)
        seen = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        for v, ok in self._window(x, n, first):
            best = torch.where(ok, torch.maximum(best, sign * v), best)
            seen |= ok
        return torch.where(seen, sign * best, float("nan"))

    def _arg_extreme(self, x: Tensor, n: int, first: Tensor, sign: float) -> Tensor:
        """1-based position from the window's first row: the first missing row if any, else the oldest extreme."""
        t_len = x.shape[0]
        rows = self._rows(t_len)
        best = torch.full(x.shape, -float("inf"), dtype=torch.float64, device=x.device)
        best_row = torch.full(x.shape, -1, dtype=torch.int64, device=x.device)
        missing_row = torch.full_like(best_row, -1)
        for s, (v, ok) in zip(range(min(n, t_len) - 1, -1, -1), self._window(x, n, first)):
            row = rows - s
            better = ok & (sign * v > best)  # strict: a tie keeps the older row
            best = torch.where(better, sign * v, best)
            best_row = torch.where(better, row, best_row)
            missing = (row >= first) & ~ok & (missing_row < 0)
            missing_row = torch.where(missing, row, missing_row)
        start = torch.maximum(rows - n + 1, first)
        chosen = torch.where(missing_row >= 0, missing_row, best_row)
        return torch.where(best_row >= 0, (chosen - start + 1).to(torch.float64), float("nan"))

    def _regression(self, y: Tensor, n: int, first: Tensor, kind: str) -> Tensor:
        """Qlib's rolling.pyx Slope/Resi/Rsquare from each window's own sums (positions: oldest 1 .. today N)."""
        zeros = torch.zeros(y.shape, dtype=torch.float64, device=y.device)
        count, sx, sxx, sy, sxy, syy = (zeros.clone() for _ in range(6))
        for s, (v, ok) in zip(range(min(n, y.shape[0]) - 1, -1, -1), self._window(y, n, first, finite=False)):
            p = float(n - s)
            w = ok.to(torch.float64)
            v = torch.where(ok, v, 0.0)
            count += w
            sx += w * p
            sxx += w * p * p
            sy += v
            sxy += p * v
            syy += v * v
        numerator = count * sxy - sx * sy
        x_spread = count * sxx - sx * sx
        if kind == "slope":
            out = numerator / x_spread
        elif kind == "resi":
            b = numerator / x_spread
            intercept = sy / count - b * (sx / count)
            out = y.to(torch.float64) - (b * n + intercept)
        else:
            rvalue = numerator / torch.sqrt(x_spread * (count * syy - sy * sy))
            out = rvalue * rvalue
        return torch.where(self._rows(y.shape[0]) < first, float("nan"), out)

    def _is_flat(self, x: Tensor, n: int, first: Tensor) -> Tensor:
        """``np.isclose(Std(x, N), 0, atol=2e-5)``: |std| <= atol, never for NaN."""
        return self.std(x, n, first).abs() <= FLAT_STD_ATOL

    def _rows(self, t_len: int) -> Tensor:
        return torch.arange(t_len, device=self.device).unsqueeze(1)

    def _like(self, a: Tensor, b: Tensor | float) -> Tensor:
        return b if isinstance(b, Tensor) else torch.tensor(b, dtype=a.dtype, device=a.device)
