"""A checkpoint's data load, a prediction and a backtest, in blocks of about QPIPE_LOAD_CELLS cells, give what one
block gives (issue 17: memory bounded by a setting, not by the universe)."""

import shutil
import subprocess
import sys

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch

from qpipe.evaluation import backtest_store
from qpipe.evaluation.backtest import BacktestConfig
from qpipe.features.handler import Processing, handler_processing
from qpipe.models.config import model_config
from qpipe.training import dataset, predicting
from qpipe.training.engine import train
from qpipe.resources import CheckpointStore, Compute
from qpipe_tests.test_model_assets import ASSETS, DAY, QUICK, SCORED, market_history, run

MARKET = "all"
CHAINS = {
    "benchmark (append)": None,  # the config's own: RobustZScoreNorm + Fillna; DropnaLabel + CSRankNorm
    "alpha360 handler defaults (a statistic over features and label)": handler_processing("alpha360", {}, "test"),
    "independent, every column at once": Processing(
        infer_processors=[{"class": "ProcessInf"}, {"class": "RobustZScoreNorm", "kwargs": {"clip_outlier": False}},
                          {"class": "CSZFillna"}],
        learn_processors=["DropnaLabel", {"class": "ZScoreNorm"}, {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
                          {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "label"}},
                          {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
        process_type="independent"),
    "a DropnaProcessor over the features (one block)": Processing(
        infer_processors=[{"class": "Fillna", "kwargs": {"fields_group": "feature"}}],
        learn_processors=[{"class": "DropnaProcessor", "kwargs": {"fields_group": "feature"}}, "DropnaLabel",
                          {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}]),
}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    with market_history(tmp_path_factory.mktemp("load_blocks"), MARKET, SCORED[1], n_instruments=30) as built:
        yield built


@pytest.fixture
def reads(monkeypatch):
    """The (rows, columns) of every block of features read (by a checkpoint's load or a prediction)."""
    seen: list[tuple[int, int]] = []
    window_features = dataset.WindowRows.features

    def spy_window(self, *args, **kwargs):
        features = window_features(self, *args, **kwargs)
        seen.append(features.shape)
        return features

    monkeypatch.setattr(dataset.WindowRows, "features", spy_window)
    return seen


def _same_frames(a: dataset.TrainingData, b: dataset.TrainingData) -> None:
    for part in ("train", "valid"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.columns == y.columns, part
        for name in ("features", "label", "dates", "instruments", "is_sample"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=f"{part}.{name}")
    assert a.infer.to_state() == b.infer.to_state() and a.learn.to_state() == b.learn.to_state()


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_a_load_in_column_blocks_is_the_load_in_one(history, reads, name):
    resources, root = history
    config = model_config("lstm", "alpha360")
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        whole = dataset.load_training_data(con, config, DAY, 60, 20, MARKET, shuffle_labels=True,
                                           processing=CHAINS[name], load_cells=10**9)
        assert len(reads) == 1
        rows, columns = reads[0]
        bound = rows * 7  # seven columns a block: 52 blocks of Alpha360
        reads.clear()
        blocked = dataset.load_training_data(con, config, DAY, 60, 20, MARKET, shuffle_labels=True,
                                             processing=CHAINS[name], load_cells=bound)
    if "DropnaProcessor" in name:  # it drops a row for a NaN in any column: it must see them all
        assert reads == [(rows, columns)]
    else:
        assert len(reads) == -(-columns // 7) and all(r * c <= bound for r, c in reads), reads
    _same_frames(whole, blocked)
    assert len(whole.train.dates) > 1000 and whole.train.features.flags.c_contiguous


@pytest.fixture(scope="module")
def checkpoint(history):
    resources, root = history
    run(DAY, DAY, ["models/mlp_checkpoint"], resources, {"models__mlp_checkpoint": {"config": QUICK}})
    return resources["checkpoints"], root / "warehouse.duckdb"


def test_predictions_in_day_blocks_are_the_predictions_in_one(checkpoint, reads):
    store, path = checkpoint
    scores = {}
    with duckdb.connect(str(path)) as con:
        for cells in (10**9, 30 * 360 * 5):  # the whole range at once; about five days a block
            reads.clear()
            written, used = predicting.write_predictions(con, store, "mlp", *SCORED, MARKET, load_cells=cells)
            scores[cells] = (con.sql("SELECT date, instrument, score FROM predictions.scores ORDER BY ALL").df(),
                             list(reads))
    (whole, whole_reads), (blocked, blocked_reads) = scores.values()
    assert len(whole_reads) == 1 and len(blocked_reads) >= 6
    assert max(r * c for r, c in blocked_reads) <= 30 * 360 * 5 * 1.2  # a block's rows vary with the day's members
    assert written == len(whole) == len(blocked) > 30 * 30 and list(used) == [DAY]
    pd.testing.assert_frame_equal(whole[["date", "instrument"]], blocked[["date", "instrument"]])
    np.testing.assert_allclose(blocked["score"], whole["score"], rtol=1e-5, atol=1e-6)  # batches differ


def test_a_prediction_that_fails_in_a_later_block_leaves_the_stored_scores_as_they_were(checkpoint, monkeypatch):
    """The blocks before it were already streamed into the INSERT: it fails, and the deletion with it."""
    store, path = checkpoint
    score_days, blocks = predicting.score_days, []

    def nan_in_the_third_block(*args, **kwargs):
        scores = score_days(*args, **kwargs)
        blocks.append(len(scores))
        return scores.assign(score=np.where(np.arange(len(scores)) == 1, np.nan, scores["score"])) if len(blocks) == 3 \
            else scores

    with duckdb.connect(str(path)) as con:
        predicting.write_predictions(con, store, "mlp", *SCORED, MARKET)
        before = con.sql("SELECT * FROM predictions.scores ORDER BY ALL").df()
        monkeypatch.setattr(predicting, "score_days", nan_in_the_third_block)
        with pytest.raises(ValueError, match=f"mlp checkpoint {DAY} gives 1 non-finite scores .* nothing was written"):
            predicting.write_predictions(con, store, "mlp", *SCORED, MARKET, load_cells=30 * 360 * 5)
        pd.testing.assert_frame_equal(con.sql("SELECT * FROM predictions.scores ORDER BY ALL").df(), before)
    assert len(blocks) == 3 and len(before) > sum(blocks)


def test_a_backtest_in_blocks_of_sessions_is_the_backtest_in_one(checkpoint, monkeypatch):
    store, path = checkpoint
    traded: list[int] = []
    trade = backtest_store._trade
    monkeypatch.setattr(backtest_store, "_trade", lambda con, model, days, *rest: traded.append(len(days)) or
                        trade(con, model, days, *rest))
    config = BacktestConfig(topk=8, n_drop=2)
    results = {}
    with duckdb.connect(str(path)) as con:
        predicting.write_predictions(con, store, "mlp", *SCORED, MARKET)
        for cells in (10**9, 30 * backtest_store.CELLS_A_PRICE_ROW * 7):  # all sessions at once; 7+ a block
            traded.clear()
            start, end = (pd.Timestamp(d).date() for d in SCORED)
            result, _ = backtest_store.run_backtest(con, "mlp", start, end, MARKET, config, load_cells=cells)
            results[cells] = (result, list(traded), backtest_store.read_daily(con, "mlp"))
    (whole, one, stored_whole), (blocked, blocks, stored_blocked) = results.values()
    assert len(one) == 1 and len(blocks) >= 4 and len(set(blocks[:-1])) == 1 and sum(blocks) == one[0] > 30
    assert len(whole.trades) > 20 and whole.report["holdings"].iloc[-1] == 8
    pd.testing.assert_frame_equal(blocked.report, whole.report)
    pd.testing.assert_frame_equal(blocked.positions.reset_index(drop=True), whole.positions.reset_index(drop=True))
    pd.testing.assert_frame_equal(blocked.trades.reset_index(drop=True), whole.trades.reset_index(drop=True))
    pd.testing.assert_frame_equal(stored_blocked, stored_whole)


def test_a_benchmark_the_market_holds_is_traded_as_any_other_stock(checkpoint, tmp_path):
    """Found in review: with QPIPE_BENCHMARK a member of the market (AAPL in an S&P 500 universe), the backtest
    never bought it; Qlib's takes the benchmark for a return series only, and trades it as the rest."""
    store, path = checkpoint
    shutil.copy(path, tmp_path / "w.duckdb")
    start, end = (pd.Timestamp(d).date() for d in SCORED)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        predicting.write_predictions(con, store, "mlp", *SCORED, MARKET)
        star = con.execute("SELECT min(instrument) FROM predictions.scores").fetchall()[0][0]
        con.execute("UPDATE predictions.scores SET score = 100 WHERE instrument = ?", [star])  # always the best
        result, _ = backtest_store.run_backtest(con, "mlp", start, end, MARKET, BacktestConfig(topk=8, n_drop=2),
                                                benchmark=star)
        closes = con.execute("SELECT date, close FROM raw.prices WHERE instrument = ? ORDER BY date", [star]).df()
    assert star in set(result.trades["instrument"]) and (result.positions["instrument"] == star).any()
    change = closes.set_index(pd.to_datetime(closes["date"]))["close"].pct_change()
    np.testing.assert_allclose(result.report["bench"], change.reindex(result.report.index), rtol=1e-9)


def test_days_past_the_members_known_are_refused_by_name(checkpoint, tmp_path):
    """Found in review: with raw/universe materialized before the prices of the last days, their predictions failed
    with torch's "torch.cat(): expected a non-empty list of Tensors"."""
    store, path = checkpoint
    shutil.copy(path, tmp_path / "w.duckdb")
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        predicting.write_predictions(con, store, "mlp", *SCORED, MARKET)
        before = con.execute("SELECT * FROM predictions.scores ORDER BY ALL").fetchall()
        con.execute("UPDATE raw.universe SET end_date = least(end_date, DATE '2024-03-20')")
        with pytest.raises(ValueError, match=f"the members of market 'all' in raw.universe end on 2024-03-20, before "
                                             f"{SCORED[1]}: .* materialize it again \\(dg launch --assets raw/universe\\)"):
            predicting.write_predictions(con, store, "mlp", *SCORED, MARKET)
        assert con.execute("SELECT * FROM predictions.scores ORDER BY ALL").fetchall() == before


@pytest.mark.parametrize("arch", ["gru", "hist"])  # HIST also reads each stock's concept memberships
def test_frames_above_frame_cells_are_memory_mapped_and_train_the_same(history, tmp_path, arch):
    """Frames of more than QPIPE_FRAME_CELLS cells live in an unlinked file under the scratch folder: the same
    values, the same trained weights, nothing left on disk once they are gone."""
    resources, root = history
    config = model_config(arch, "alpha360", n_epochs=2, batch_size=256, hidden_size=8, seed=3)
    scratch = tmp_path / "scratch"
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        held = dataset.load_training_data(con, config, DAY, 60, 20, MARKET)
        mapped = dataset.load_training_data(con, config, DAY, 60, 20, MARKET, frame_cells=1_000, scratch=scratch)
    _same_frames(held, mapped)

    def on_disk(array: np.ndarray) -> bool:  # a mapping, or a view of one
        return isinstance(array, np.memmap) or isinstance(array.base, np.memmap)

    for part in ("train", "valid"):
        assert not on_disk(getattr(held, part).features) and on_disk(getattr(mapped, part).features), part
    if arch == "hist":  # a row per stock, not per training row: small enough to stay in memory at any size
        stocks = np.unique(held.train.instruments)
        assert held.train.concepts.shape == (len(stocks), len(held.concepts)) and held.train.concepts.any()
        assert len(set(zip(held.train.instruments, held.train.concept_row))) == len(set(held.train.concept_row)) == len(stocks)
        assert (held.train.concepts.sum(1) >= 1).all()  # every synthetic stock has a sector
        for part in ("train", "valid"):
            for name in ("concepts", "concept_row"):
                np.testing.assert_array_equal(getattr(getattr(held, part), name), getattr(getattr(mapped, part), name))
        assert held.concepts == mapped.concepts
    assert list(scratch.iterdir()) == []  # unlinked as it was made: a killed step leaves no file behind
    assert held.describe_frames().endswith("GB in memory")
    assert mapped.describe_frames().endswith("GB memory-mapped (QPIPE_FRAME_CELLS)")
    weights = [train(config, data.train, data.valid, device="cpu").state_dict for data in (held, mapped)]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


FRAMES_IN_A_FULL_FOLDER = """
import resource, sys
from qpipe.training import dataset
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files of at most 1 MB: a disk that is full
try:
    dataset.frame_values(1000, 360, frame_cells=0, scratch=sys.argv[1])
except OSError as error:
    print(error)
"""


def test_frames_that_do_not_fit_on_the_scratch_disk_are_refused_at_once_with_what_to_do(tmp_path):
    """The file is reserved before it is mapped: a write to a page the disk has no room for would kill the step
    with SIGBUS, naming nothing."""
    done = subprocess.run([sys.executable, "-c", FRAMES_IN_A_FULL_FOLDER, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (f"[Errno 27] a checkpoint's training frames need 1.4 MB in {tmp_path} (File too "
                                   "large): free room there, point QPIPE_HOME at a larger disk, or raise "
                                   "QPIPE_FRAME_CELLS to hold them in memory")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_step_on_mapped_frames_says_so_and_trains_as_on_frames_in_memory(history, tmp_path):
    resources, root = history
    config = {"models__mlp_checkpoint": {"config": {**QUICK, "market": MARKET, "params": {**QUICK["params"], "seed": 11}}}}
    instance = dg.DagsterInstance.ephemeral()
    said, weights = {}, {}
    for where, compute in (("memory", Compute(threads=1)),
                           ("mapped", Compute(threads=1, frame_cells=1_000, scratch=str(tmp_path / "scratch")))):
        step = {**resources, "compute": compute, "checkpoints": CheckpointStore(root=str(tmp_path / where))}
        result = dg.materialize(ASSETS, selection=[dg.AssetKey(["models", "mlp_checkpoint"])], partition_key=DAY,
                                resources=step, run_config={"ops": config}, instance=instance)
        said[where] = " ".join(e.user_message for e in instance.all_logs(result.run_id)
                               if e.step_key == "models__mlp_checkpoint")
        weights[where] = safetensors.torch.load_file(tmp_path / where / "mlp" / f"{DAY}.safetensors")
    assert "GB in memory, windows" in said["memory"] and "memory-mapped (QPIPE_FRAME_CELLS)" in said["mapped"]
    assert weights["memory"].keys() == weights["mapped"].keys()
    for name, tensor in weights["memory"].items():
        assert torch.equal(tensor, weights["mapped"][name]), name
    assert list((tmp_path / "scratch").iterdir()) == []
