"""Training reports where it is while it runs; each step's thread budget is deliberate and validated."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch

from qpipe import compute
from qpipe.models.config import model_config
from qpipe.training import TrainingFrame, train
from qpipe.training import progress as progress_module
from qpipe.training.progress import Progress, ProgressClock


def test_progress_line_shows_epoch_batch_share_and_eta():
    line = Progress("train", epoch=2, n_epochs=4, batch=23, n_batches=46, seconds=30.0, eta=65.0).line()
    assert line == "epoch 2/4  batch 23/46   38%  ETA 1:05"
    assert Progress("pretrain", 1, 2, 1, 10, 1.0, 3725.0).line().startswith("pretrain epoch 1/2")
    assert Progress("pretrain", 1, 2, 1, 10, 1.0, 3725.0).line().endswith("ETA 1:02:05")


def test_the_clock_reports_at_most_every_interval():
    reports = []
    clock = ProgressClock("train", n_epochs=2, n_batches=5, report=reports.append, every=3600.0)
    for batch in range(1, 6):
        clock.tick(1, batch)
    assert reports == []  # nothing before the interval has passed
    clock = ProgressClock("train", n_epochs=2, n_batches=5, report=reports.append, every=0.0)
    clock.tick(1, 5)
    assert len(reports) == 1 and reports[0].batch == 5 and reports[0].eta == pytest.approx(reports[0].seconds)


def test_training_reports_progress_from_inside_its_epochs(monkeypatch):
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 0.0)
    rng = np.random.default_rng(0)
    n, days = 20, 12
    columns = [f"F{i}" for i in range(8)]
    frame = TrainingFrame(rng.standard_normal((n * days, 8)).astype(np.float32),
                          rng.standard_normal(n * days).astype(np.float32),
                          np.repeat(np.datetime64("2024-01-01") + np.arange(days), n),
                          np.tile(np.array([f"S{i:02d}" for i in range(n)]), days), columns, np.ones(n * days, bool))
    reports: list[Progress] = []
    config = model_config("mlp", "alpha158", input_dim=8, layers=(4,), n_epochs=3, batch_size=40, early_stop=5,
                          steps_per_epoch=None)
    train(config, frame, None, device="cpu", on_progress=reports.append)
    assert [(r.epoch, r.batch) for r in reports] == [(e, b) for e in (1, 2, 3) for b in range(1, 7)]
    assert all(r.n_epochs == 3 and r.n_batches == 6 for r in reports)
    assert reports[-1].eta == 0.0 and all(r.eta >= 0 for r in reports)


def test_thread_budget_is_half_the_cores_by_default_and_validated(monkeypatch):
    monkeypatch.setattr(compute, "cpu_cores", lambda: 8)
    monkeypatch.delenv("QPIPE_THREADS", raising=False)
    assert compute.compute_plan() == compute.ComputePlan(cores=8, threads=4, parallel_steps=2)
    assert compute.compute_plan("1") == compute.ComputePlan(cores=8, threads=1, parallel_steps=8)
    monkeypatch.setattr(compute, "cpu_cores", lambda: 1)
    assert compute.compute_plan() == compute.ComputePlan(cores=1, threads=1, parallel_steps=1)
    with pytest.raises(ValueError, match="QPIPE_THREADS = 'two': expected auto or a positive number"):
        compute.compute_plan("two")
    with pytest.raises(ValueError, match="QPIPE_THREADS = '0'"):
        compute.compute_plan("0")


def test_use_threads_sets_torch_numba_and_the_environment_for_later_imports(monkeypatch):
    before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    for name in (*compute.THREAD_VARIABLES, "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    try:
        compute.use_threads(1)
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        assert all(compute.os.environ[name] == "1" for name in compute.THREAD_VARIABLES)
        assert "NUMBA_NUM_THREADS" not in compute.os.environ
    finally:
        torch.set_num_threads(before)
        numba.set_num_threads(numba_before)


NUMBA_AFTER_A_STEP = """
import os, numba, numpy as np
from qpipe import compute
compute.use_threads(1)
@numba.njit(parallel=True)
def row_sums(v):
    out = np.empty(v.shape[0])
    for i in numba.prange(v.shape[0]):
        out[i] = v[i].sum()
    return out
row_sums(np.ones((3, 4)))
os.environ.pop("NUMBA_NUM_THREADS", None)  # as a test's monkeypatch or a later step restores it
@numba.njit(parallel=True)
def row_max(v):
    out = np.empty(v.shape[0])
    for i in numba.prange(v.shape[0]):
        out[i] = v[i].max()
    return out
print(row_max(np.ones((3, 4))).tolist(), numba.get_num_threads())
"""


def test_numba_compiles_after_a_step_set_its_threads():
    """CI once failed here: use_threads wrote NUMBA_NUM_THREADS, numba rereads it at every
    compilation and refused a value that differed from its launched pool ('Cannot set
    NUMBA_NUM_THREADS to a different value once the threads have been launched')."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", NUMBA_AFTER_A_STEP], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[1.0,", "1.0,", "1.0]", "1"]


OPENMP_AFTER_QPIPE = """
import qpipe, numba, numpy as np
@numba.njit(parallel=True)
def total(v):
    s = 0.0
    for i in numba.prange(v.shape[0]):
        s += v[i]
    return s
print(total(np.ones(10)), numba.threading_layer())
"""


@pytest.mark.parametrize("chosen, spins", [(None, "0"), ("ACTIVE", "30000000000")])
def test_openmp_threads_sleep_between_kernels_unless_the_user_chose(chosen, spins):
    """numba's OpenMP threads spinning after each kernel took the cores DuckDB's feature writes needed
    (compute.wait_passively). libgomp prints the spin count it loaded with (300000 when nobody chose)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {"OMP_DISPLAY_ENV": "VERBOSE", "NUMBA_THREADING_LAYER": "omp"} | ({"OMP_WAIT_POLICY": chosen} if chosen else {})
    done = subprocess.run([sys.executable, "-c", OPENMP_AFTER_QPIPE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["10.0", "omp"]
    assert f"GOMP_SPINCOUNT = '{spins}'" in done.stderr
