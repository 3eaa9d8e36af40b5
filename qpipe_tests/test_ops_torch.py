"""The torch operator table (``TorchOps``, the GPU path of the features) against the numba CPU kernels.

Contract (issue 17): the same NaN masks, the same infinities, and finite values within
``1e-6 * max(1, |cpu|)``. The tests run on the CPU's torch here and on every visible CUDA device too.
Rolling statistics accumulate in the kernels' order and ``Log`` is numpy's own on both sides (float32 logs differ
in the last bit between libraries, and Corr amplifies that bit), so on the CPU's torch the columns come out bit for
bit; a GPU's division and sqrt may still differ in the last bit.
"""

import shutil

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from qpipe.assets.prices import raw_prices
from qpipe.features import ops, store
from qpipe.features.alpha158 import alpha158_columns
from qpipe.features.alpha360 import alpha360_columns
from qpipe.features.ops_torch import TOLERANCE, TorchOps, disagreement
from qpipe.features.panel import panel_from_frame
from qpipe_tests.test_alpha_features import _fixture_frame
from qpipe_tests.test_features_asset import FIRST, LAST, _run
from qpipe_tests.test_qlib_golden import GOLDEN

DEVICES = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
WINDOWS = (1, 2, 5, 20, 60)


def assert_same(name: str, cpu: np.ndarray, other: np.ndarray) -> None:
    gap = disagreement(cpu, other)
    if gap == float("inf"):  # say what differs
        assert other.dtype == cpu.dtype and other.shape == cpu.shape, f"{name}: {other.dtype} {other.shape}"
        np.testing.assert_array_equal(np.isnan(other), np.isnan(cpu), err_msg=f"{name}: NaN masks differ")
        np.testing.assert_array_equal(other, cpu, err_msg=f"{name}: infinities differ")
    assert gap <= TOLERANCE, f"{name}: {gap:.3g} > {TOLERANCE:g}"


def _edge_panel(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two float32 [90, 14] series with what the kernels treat specially, and each column's first row."""
    rng = np.random.default_rng(seed)
    t_len, j_len = 90, 14
    x = (20 * np.exp(np.cumsum(rng.normal(0, 0.02, (t_len, j_len)), axis=0))).astype(np.float32)
    x[:, 1] = np.round(x[:, 1])  # ties everywhere
    x[10:40, 2] = 20.0  # a flat stretch (Std exactly 0, Rsquare/Corr NaN)
    x[10:30, 3] = 20.0 + np.tile([0.0, 4e-6, 8e-6, 4e-6], 5)  # near-flat: std below 2e-5
    x[[5, 6, 7, 50], 4] = np.nan  # suspensions inside windows
    x[20, 5], x[21, 5], x[60, 5] = np.inf, -np.inf, np.inf  # infinities are missing for the pandas rollers
    x[:, 6] = np.nan  # never priced
    x[::3, 7] = np.nan
    x[70, 8] = 0.0
    x[71, 8] = -1.0  # Log(0) = -inf, Log(-1) = NaN
    y = (x * np.exp(rng.normal(0, 0.05, (t_len, j_len)))).astype(np.float32)
    y[30:50, 9] = 7.0
    first = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 30, 59, 88, 90], dtype=np.int64)  # late listings, one never
    return x, y, first


def _operator_cases():
    for n in WINDOWS:
        for name in ("mean", "sum", "std", "max", "min", "rank", "idxmax", "idxmin", "slope", "resi", "rsquare"):
            yield f"{name}({n})", lambda o, x, y, first, name=name, n=n: getattr(o, name)(x, n, first)
        for q in (0.2, 0.8):
            yield f"quantile({n},{q})", lambda o, x, y, first, n=n, q=q: o.quantile(x, n, q, first)
        yield f"corr({n})", lambda o, x, y, first, n=n: o.corr(x, y, n, first)
        yield f"mean(gt,{n})", lambda o, x, y, first, n=n: o.mean(o.gt(x, y), n, first)
    for n in (1, 2, 5, 60, 89, 90, 200, -1, -2):
        yield f"ref({n})", lambda o, x, y, first, n=n: o.ref(x, n, first)
    yield "greater", lambda o, x, y, first: o.greater(x, y)
    yield "greater(x-y, 0)", lambda o, x, y, first: o.greater(x - y, 0)
    yield "less", lambda o, x, y, first: o.less(x, y)
    yield "gt", lambda o, x, y, first: o.gt(x, y)
    yield "lt", lambda o, x, y, first: o.lt(x, y)
    for name in ("ge", "le", "eq", "ne"):  # (the expression language's other comparisons)
        yield name, lambda o, x, y, first, name=name: getattr(o, name)(x, y)
    yield "log", lambda o, x, y, first: o.log(x)
    yield "abs", lambda o, x, y, first: o.abs(x - y)
    yield "sign", lambda o, x, y, first: o.sign(x - y)


CASES = dict(_operator_cases())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_each_operator_matches_the_cpu_kernel(device: str, case: str):
    x, y, first = _edge_panel()
    with np.errstate(all="ignore"):  # inf - inf, log(-1): Qlib ignores the warnings too
        expected = np.asarray(CASES[case](ops, x, y, first))
    torch_ops = TorchOps(device)
    got = CASES[case](torch_ops, torch_ops.asarray(x), torch_ops.asarray(y), torch_ops.asarray(first))
    assert got.dtype == {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                         np.dtype(np.bool_): torch.bool}[expected.dtype], f"{case}: dtype {got.dtype}"
    assert got.device == torch.device(device)
    assert_same(case, expected, got.cpu().numpy())


def test_ref_zero_is_refused_as_on_the_cpu():
    with pytest.raises(ValueError, match="Ref"):
        TorchOps("cpu").ref(torch.zeros(3, 1), 0, torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="window must be >= 1"):
        TorchOps("cpu").mean(torch.zeros(3, 1), 0, torch.zeros(1, dtype=torch.int64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prices", ["csi300_golden", "edge_cases"])
def test_whole_feature_sets_match_on_real_prices(device: str, prices: str):
    """All 518 columns, Qlib's names and order, on the real CSI300 golden prices and on the edge-case fixture, to
    1e-6 (the CORR and CORD columns too: their Log(volume) is numpy's on both sides)."""
    frame = (pd.read_csv(GOLDEN / "fixture_prices.csv", parse_dates=["date"]) if prices == "csi300_golden"
             else _fixture_frame())
    panel = panel_from_frame(frame)
    for columns in (alpha158_columns, alpha360_columns):
        cpu = list(columns(panel))
        gpu = list(columns(panel, TorchOps(device)))
        assert [name for name, _ in gpu] == [name for name, _ in cpu]
        for (name, expected), (_, got) in zip(cpu, gpu):
            assert_same(name, expected, got)


def test_auto_takes_a_gpu_only_when_one_is_visible():
    chosen = store.operators("auto")
    assert store.operators("cpu") is ops
    if torch.cuda.is_available():
        assert isinstance(chosen, TorchOps) and chosen.device.type == "cuda"
    else:
        assert chosen is ops
        with pytest.raises(ValueError, match="CUDA device"):
            store.operators("cuda:0")


@pytest.mark.parametrize("device", DEVICES)
def test_a_feature_step_on_torch_writes_the_tables_the_cpu_kernels_write(device: str, tmp_path):
    """The warehouse path (blocks of instruments, staging, the replace) with TorchOps: the same rows, the same values."""
    cpu_path, gpu_path = tmp_path / "cpu.duckdb", tmp_path / "gpu.duckdb"
    _run(cpu_path, [raw_prices], FIRST, LAST)
    shutil.copy(cpu_path, gpu_path)
    sets = list(store.FEATURE_SETS.values())
    for path, operators in ((cpu_path, ops), (gpu_path, TorchOps(device))):
        with duckdb.connect(str(path)) as con:
            written = store.write_features(con, sets, FIRST, LAST, block_cells=2_000, operators=operators)
            assert written == {fs.name: con.execute("SELECT count(*) FROM raw.prices").fetchone()[0] for fs in sets}
    for fs in sets:
        tables = []
        for path in (cpu_path, gpu_path):
            with duckdb.connect(str(path), read_only=True) as con:
                tables.append(con.execute(f"SELECT * FROM {fs.table} ORDER BY date, instrument").fetchnumpy())
        cpu, gpu = tables
        assert list(gpu) == list(cpu)
        assert np.array_equal(gpu["date"], cpu["date"]) and np.array_equal(gpu["instrument"], cpu["instrument"])
        for name in fs.columns:
            assert_same(f"{fs.name}.{name}", np.ma.filled(cpu[name], np.nan), np.ma.filled(gpu[name], np.nan))
