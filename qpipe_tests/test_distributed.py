"""Data-parallel training (Qlib's data_parall): 2 gloo ranks under torchrun train the weights one process trains.

Tolerance: max |w_2ranks - w_1process| <= 1e-5 over every tensor of the state dict (weights, BatchNorm buffers).
Two ranks change only the order of floating-point sums: each gradient is the sum of two half-batch sums instead
of one, and BatchNorm's batch mean and variance likewise, about one float32 ulp (6e-8 relative) per sum. Over a
few epochs of small steps that stays near 1e-7 (measured: GRU 4e-8, LSTM 3e-8, MLP 5e-7 with running variances
up to 24; the MLP through the checkpoint step, 20 steps an epoch at lr 2e-3, 2e-6), while training moves every
network by more than 1e-2 from its initial weights (asserted). The MLP trains with Qlib DNNModelPytorch's own
optimizer, plain SGD ("gd"), which a wrong gradient scale (DDP's average instead of the sum) or unsynchronized
BatchNorm moves by 1e-2 (tried); Adam hides most of a scale error (it divides by the gradient's own size: 6e-5
for the LSTM, still 6x the tolerance). Under Adam the MLP is not comparable this tightly: the bias of its
Linear layer right before BatchNorm has a gradient that is 0 in exact arithmetic, Adam normalizes its rounding
noise into full-size steps, and that bias (with the running mean that follows it) wanders differently under any
change of summation order, one process on another thread count too.

The one process trains on one thread, as each rank does (``threads=2`` over two ranks), and not on what an earlier
test left: the thread count changes the order of its sums too (the MLP: 5e-7 on one thread, 4e-7 on two; through
the checkpoint step, whose process runs Compute's threads, 1.9e-6 on one and on two). Each figure repeats to the
last digit run after run (measured twice to four times), so 1e-5 is a margin of 20 over the networks' largest and 5
over the checkpoint step's, not a bet on noise.
"""

import json
import re

import dagster as dg
import pytest
import torch

from qpipe.models.config import ConfigError, build_model, model_config
from qpipe.resources import CheckpointStore
from qpipe.training.checkpoint import load_checkpoint
from qpipe.training.distributed import processes, train_processes
from qpipe.training.engine import train
from qpipe.training.reproducibility import seed_everything
from qpipe_tests.test_model_assets import ASSETS, DAY, QUICK, market_history
from qpipe_tests.test_training import days, market

TOLERANCE = 1e-5
SMALL = {"n_epochs": 3, "batch_size": 200, "early_stop": 5, "seed": 7}
NETWORKS = {  # dropout 0 everywhere: with dropout the ranks draw other masks than one process does
    "mlp": {"layers": (32,), "dropout": 0.0, "optimizer": "gd", "steps_per_epoch": None, "scheduler": None},
    "lstm": {"hidden_size": 16, "num_layers": 1, "dropout": 0.0},
    "gru": {"hidden_size": 16, "num_layers": 2, "dropout": 0.0},
}


@pytest.fixture(scope="module")
def frames():
    frame = market(40, 50, strength=0.3)  # 40 stocks x 50 days of Alpha360-shaped rows: 8 batches of 200 a pass
    return days(frame, 0, 40), days(frame, 40, 50)


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_two_ranks_train_the_weights_of_one_process(frames, arch, tmp_path, monkeypatch):
    train_frame, valid_frame = frames
    threads = torch.get_num_threads()  # whatever the process was left with: a test before may have set it
    torch.set_num_threads(1)  # each rank's share of threads=2 below
    try:
        one = train(model_config(arch, "alpha360", **SMALL, **NETWORKS[arch]), train_frame, valid_frame, device="cpu")
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # torchrun's and the ranks' temporary folder
    two = train_processes(model_config(arch, "alpha360", **SMALL, **NETWORKS[arch], data_parall=2), train_frame,
                          valid_frame, devices=["cpu", "cpu"], threads=2, root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the work dir and torchrun's logs went with the run

    difference = _largest_difference(one.state_dict, two.state_dict)
    print(f"{arch}: max |w_2ranks - w_1process| = {difference:.3g}")
    assert difference <= TOLERANCE
    seed_everything(SMALL["seed"])
    initial = build_model(model_config(arch, "alpha360", **SMALL, **NETWORKS[arch])).state_dict()
    assert _largest_difference(initial, one.state_dict) > 1e-2  # training moved the weights: equality is not trivial
    assert two.processes == 2 and one.processes == 1 and two.seed == one.seed == SMALL["seed"]
    assert [h["epoch"] for h in two.history] == [h["epoch"] for h in one.history] == [1, 2, 3]
    assert two.best_epoch == one.best_epoch
    for key in ("train_loss", "valid_loss", "valid_ic"):  # the train loss is the batch's, summed over the ranks
        assert [h[key] for h in two.history] == pytest.approx([h[key] for h in one.history], rel=1e-5, abs=1e-6)


def test_a_failing_rank_is_named(frames):
    train_frame, valid_frame = frames
    too_big = model_config("lstm", "alpha360", **NETWORKS["lstm"], n_epochs=1, batch_size=10_000, data_parall=2)
    with pytest.raises(RuntimeError, match=r"data-parallel training on 2 processes failed: rank 0: ValueError: 1600 "
                                           r"training samples is fewer than one batch \(batch_size 10000\)"):
        train_processes(too_big, train_frame, valid_frame, devices=["cpu", "cpu"], threads=2)


@pytest.mark.parametrize("arch, why", [
    ("gats", "model 'gats' trains on one whole day per batch"),
    ("hist", "model 'hist' trains on one whole day per batch"),
    ("tabnet", "model 'tabnet' normalizes ghost batches"),
])
@pytest.mark.parametrize("value", [2, True])
def test_models_whose_batches_cannot_be_split_are_refused(arch, why, value):
    with pytest.raises(ConfigError, match=f"hyper-parameter data_parall = {value!r}: {why}"):
        model_config(arch, "alpha360", data_parall=value)
    assert model_config(arch, "alpha360", data_parall=1).params["data_parall"] == 1


@pytest.mark.parametrize("value", [0, -1, "x", 2.0, [2]])
def test_a_bad_data_parall_is_refused(value):
    with pytest.raises(ConfigError, match=re.escape(f"hyper-parameter data_parall = {value!r}: must be a number of "
                                                    "processes >= 1, or true for every visible GPU")):
        model_config("lstm", "alpha360", data_parall=value)


def test_qlibs_bool_and_the_number_of_processes():
    assert model_config("lstm", "alpha360").params["data_parall"] is None
    assert model_config("lstm", "alpha360", data_parall=False).params["data_parall"] is None
    assert processes(model_config("lstm", "alpha360", data_parall=3), "cpu") == 3
    assert processes(model_config("lstm", "alpha360", data_parall=True), "cpu") == 1  # every GPU: none here
    with pytest.raises(ValueError, match="data_parall = 2 trains on CUDA GPUs or CPU processes, not on device 'mps'"):
        processes(model_config("lstm", "alpha360", data_parall=2), "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="data_parall = 2 trains on 2 GPUs, but 0 are visible here"):
            processes(model_config("lstm", "alpha360", data_parall=2), "cuda")


def test_one_process_refuses_a_config_that_asks_for_two(frames):
    with pytest.raises(ValueError, match="data_parall = 2 but this training runs 1 process"):
        train(model_config("lstm", "alpha360", data_parall=2), *frames, device="cpu")


# --- the checkpoint step: torchrun through Dagster Pipes ---------------------------------------------------------


@pytest.fixture(scope="module")
def market_env(tmp_path_factory):
    with market_history(tmp_path_factory.mktemp("data_parallel"), "all", "2024-01-31", n_instruments=20) as built:
        yield built


def test_the_checkpoint_step_trains_on_two_ranks_through_pipes(market_env, monkeypatch):
    resources, root = market_env
    monkeypatch.setenv("QPIPE_MARKET", "all")
    params = {**QUICK["params"], "dropout": 0.0, "optimizer": "gd", "seed": 3}
    instance = dg.DagsterInstance.ephemeral()
    results = {}
    for ranks in (2, 1):
        resources_k = {**resources, "checkpoints": CheckpointStore(root=str(root / f"checkpoints{ranks}"))}
        config = {"models__mlp_checkpoint": {"config": {**QUICK, "params": {**params, "data_parall": ranks}}}}
        results[ranks] = dg.materialize(ASSETS, selection=[dg.AssetKey(["models", "mlp_checkpoint"])], partition_key=DAY,
                                        resources=resources_k, run_config={"ops": config}, instance=instance)

    shown = results[2].asset_materializations_for_node("models__mlp_checkpoint")[0].metadata
    assert shown["processes"].value == 2 and shown["device"].value == "cpu"
    sidecar = json.loads((root / "checkpoints2" / "mlp" / f"{DAY}.json").read_text())
    assert sidecar["processes"] == 2 and sidecar["config"]["params"]["data_parall"] == 2
    assert shown["best_epoch"].value == sidecar["best_epoch"]

    # rank 0's log lines reach the step's event log through Pipes, each once (rank 1 stays silent)
    lines = [e.user_message for e in instance.all_logs(results[2].run_id) if e.step_key == "models__mlp_checkpoint"]
    assert lines.count("data-parallel training on 2 processes (gloo, cpu)") == 1
    for h in sidecar["history"]:
        said = [line for line in lines if line.startswith(f"epoch {h['epoch']}/{h['n_epochs']} done")]
        assert len(said) == 1 and f"valid loss {h['valid_loss']:.6f}" in said[0]
    assert len(sidecar["history"]) == QUICK["params"]["n_epochs"]

    # the same partition trained in the step's own process: the same weights, up to summation order
    single = results[1].asset_materializations_for_node("models__mlp_checkpoint")[0].metadata
    assert single["processes"].value == 1
    two = load_checkpoint(root / "checkpoints2" / "mlp" / DAY).model.state_dict()
    one = load_checkpoint(root / "checkpoints1" / "mlp" / DAY).model.state_dict()
    difference = _largest_difference(one, two)
    print(f"mlp checkpoint step: max |w_2ranks - w_1process| = {difference:.3g}")
    assert difference <= TOLERANCE
