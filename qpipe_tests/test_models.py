"""Architectures, the registry, and configuration from Qlib workflow YAMLs."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from qpipe.models.config import ConfigError, config_from_qlib_yaml, model_config
from qpipe.models.registry import ARCHITECTURES, UnknownModelError, get_spec, spec_for_qlib_class
from qpipe.training import TrainingFrame, build_model
from qpipe.training.engine import make_frame_sampler

QLIB_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "qlib_configs"
FIELDS = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")
ALPHA360 = [f"{field}{lag}" for field in FIELDS for lag in range(59, -1, -1)]
CPU = torch.device("cpu")


def frame(features: np.ndarray, columns: list[str], n_days: int = 1) -> TrainingFrame:
    """Rows of n_days consecutive dates, the same instruments each day, each in 1-2 of 3 concepts."""
    n = len(features) // n_days
    dates = np.repeat(np.datetime64("2020-01-01") + np.arange(n_days), n)
    instruments = np.tile(np.array([f"S{i:02d}" for i in range(n)]), n_days)
    concepts = np.eye(3, dtype=np.float32)[np.arange(n) % 3] + np.eye(3, dtype=np.float32)[np.arange(n) % 2]
    return TrainingFrame(features.astype(np.float32), np.zeros(len(features), np.float32), dates, instruments, columns,
                         np.ones(len(features), bool), concepts=np.minimum(concepts, 1),
                         concept_row=np.tile(np.arange(n), n_days))


@pytest.mark.parametrize("name, feature_set", [(name, fs) for name in ARCHITECTURES for fs in get_spec(name).presets])
def test_every_model_maps_a_batch_to_one_score_per_sample(name, feature_set):
    config = model_config(name, feature_set)
    if feature_set == "alpha360":
        width, columns, n_days = 360, ALPHA360, 1
    else:  # MLP: 157 flat columns; RNNs: the 20 FilterCol features in step_len windows
        width = config.params.get("input_dim") or config.params["d_feat"]
        columns, n_days = [f"F{i}" for i in range(width)], 3
    data = frame(np.random.default_rng(0).standard_normal((5 * n_days, width)), columns, n_days)
    sampler = make_frame_sampler(config, data, CPU)
    inputs = sampler.inputs(torch.arange(sampler.n))
    flat = get_spec(name).sampler == "flat"
    expected_input = (5 * n_days, width) if flat else (5 * n_days, config.step_len or 60, config.params["d_feat"])
    assert tuple(inputs[0].shape) == expected_input
    assert len(inputs) == (2 if name == "hist" else 1)  # HIST also reads each stock's concept row
    model = build_model(config).eval()
    assert model(*inputs).shape == (5 * n_days,)


def test_hist_every_stock_gets_a_score_and_concepts_matter():
    torch.manual_seed(0)
    model = build_model(model_config("hist", "alpha360", hidden_size=8, num_layers=1)).eval()
    x = torch.randn(6, 60, 6)
    concepts = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 1], [0, 1], [0, 0]], dtype=torch.float32)  # the last has none
    with torch.no_grad():
        scores = model(x, concepts)
        regrouped = model(x, concepts[:, [1, 0]].roll(1, 0))
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    assert not torch.allclose(scores, regrouped)
    with pytest.raises(ValueError, match="reads each stock's concepts"):
        make_frame_sampler(model_config("hist", "alpha360"), TrainingFrame(
            np.zeros((2, 360), np.float32), np.zeros(2, np.float32), np.repeat(np.datetime64("2020-01-01"), 2),
            np.array(["A", "B"]), ALPHA360, np.ones(2, bool)), CPU)


def test_alpha360_rows_become_time_major_sequences_oldest_first():
    # Column FIELD<lag> holds 100 * field index - lag: along time it must rise (lag 59 -> 0), across features step by 100.
    values = np.array([100 * FIELDS.index(c.rstrip("0123456789")) - int(c.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")) for c in ALPHA360])
    sampler = make_frame_sampler(model_config("lstm", "alpha360"), frame(np.tile(values, (2, 1)), ALPHA360), CPU)
    sequence = sampler.gather(torch.tensor([1]))[0]
    assert sequence.shape == (60, 6)
    expected = np.array([[100 * f - (59 - t) for f in range(6)] for t in range(60)])
    np.testing.assert_array_equal(sequence.numpy(), expected)


def test_models_keep_qlibs_state_dict_keys():
    mlp_keys = set(build_model(model_config("mlp", "alpha360")).state_dict())
    assert {"dnn_layers.1.0.weight", "dnn_layers.1.1.running_mean", "dnn_layers.3.weight", "dnn_layers.3.bias"} <= mlp_keys
    lstm_keys = set(build_model(model_config("lstm", "alpha360")).state_dict())
    assert lstm_keys == {f"rnn.{p}_{k}_l{i}" for p in ("weight", "bias") for k in ("ih", "hh") for i in (0, 1)} | {"fc_out.weight", "fc_out.bias"}
    alstm_keys = set(build_model(model_config("alstm", "alpha360")).state_dict())
    assert {"net.fc_in.weight", "att_net.att_fc_in.weight", "att_net.att_fc_out.weight", "fc_out.weight"} <= alstm_keys


def test_transformers_keep_qlibs_state_dict_keys():
    keys = set(build_model(model_config("transformer", "alpha360")).state_dict())
    assert {"feature_layer.weight", "pos_encoder.pe", "decoder_layer.weight", "encoder_layer.linear1.weight",
            "transformer_encoder.layers.1.self_attn.in_proj_weight", "transformer_encoder.layers.1.linear2.weight"} <= keys
    keys = set(build_model(model_config("localformer", "alpha158")).state_dict())
    assert {"rnn.weight_ih_l1", "transformer_encoder.conv.1.weight", "transformer_encoder.layers.1.norm2.bias",
            "pos_encoder.pe", "decoder_layer.bias"} <= keys


def test_transformer_layers_are_qlibs_pytorch_defaults():
    model = build_model(model_config("transformer", "alpha360"))
    layer = model.transformer_encoder.layers[0]
    assert layer.linear1.out_features == 2048 and not layer.norm_first and layer.self_attn.num_heads == 2
    assert torch.allclose(model.pos_encoder.pe[1, 0, :2], torch.tensor([np.sin(1.0), np.cos(1.0)], dtype=torch.float32))


def test_gats_attends_over_the_days_stocks_as_qlib():
    torch.manual_seed(0)
    model = build_model(model_config("gats", "alpha360", hidden_size=8, num_layers=1, dropout=0.0)).eval()
    assert {"rnn.weight_ih_l0", "transformation.weight", "a", "fc.weight", "fc_out.weight"} <= set(model.state_dict())
    assert isinstance(model.rnn, nn.LSTM)  # the benchmark's base_model
    hidden = torch.randn(5, 8)
    x = model.transformation(hidden)
    pairs = torch.cat((x.expand(5, 5, 8), x.expand(5, 5, 8).transpose(0, 1)), 2).view(-1, 16)  # Qlib's [N, N, 2H] route
    qlib = torch.softmax(nn.functional.leaky_relu((model.a.t() @ pairs.t()).view(5, 5)), dim=1)
    torch.testing.assert_close(model.attention(hidden), qlib)
    day = torch.randn(5, 60, 6)
    one_day = model(day)
    assert one_day.shape == (5,) and not torch.allclose(model(day[:3]), one_day[:3])  # a stock's score depends on its day


@pytest.mark.parametrize("model", ["transformer", "localformer"])
def test_heads_that_do_not_divide_the_model_width_are_named(model):
    """Found by a user: d_model 10 with nhead 3 failed inside torch with 'embed_dim must be divisible by num_heads'."""
    with pytest.raises(ConfigError, match="hyper-parameters d_model = 10 and nhead = 3: d_model must be a multiple of nhead"):
        model_config(model, "alpha360", d_model=10, nhead=3)
    assert model_config(model, "alpha360", d_model=12, nhead=3).params["d_model"] == 12


@pytest.mark.parametrize("file", ["workflow_config_gats_Alpha360.yaml", "workflow_config_hist_Alpha360.yaml"])
def test_qlibs_pretrained_base_pickle_is_refused_by_name(file, tmp_path):
    with pytest.raises(ConfigError, match="model_path = 'benchmarks/LSTM/model_lstm_csi300.pkl': a pickled Qlib/PyTorch file is never loaded"):
        config_from_qlib_yaml(QLIB_CONFIGS / file)
    document = yaml.safe_load((QLIB_CONFIGS / file).read_text())
    del document["task"]["model"]["kwargs"]["model_path"]  # then the benchmark's other settings load
    (tmp_path / file).write_text(yaml.safe_dump(document))
    config = config_from_qlib_yaml(tmp_path / file)
    assert config.params["base_model"] == "LSTM" and config.params["lr"] == 1e-4


def test_alstm_honours_rnn_type():
    assert isinstance(build_model(model_config("alstm", "alpha360")).rnn, nn.GRU)
    assert isinstance(build_model(model_config("alstm", "alpha360", rnn_type="LSTM")).rnn, nn.LSTM)


def test_registry_names_the_valid_models_for_an_unknown_one():
    assert get_spec("LSTM") is get_spec("lstm")
    with pytest.raises(UnknownModelError, match="unknown model 'lstn'; valid models: alstm, gats, gru, hist, localformer, lstm, mlp, sfm, tabnet, transformer"):
        get_spec("lstn")
    with pytest.raises(UnknownModelError, match="'XGBModel' has no qpipe architecture; supported: ALSTM, DNNModelPytorch, GATs, GRU, HIST, LSTM, LocalformerModel, SFM, TabnetModel, TransformerModel"):
        spec_for_qlib_class("XGBModel")


# --- Qlib workflow YAMLs -------------------------------------------------------------------------

YAMLS = {
    "workflow_config_mlp_Alpha360.yaml": ("mlp", "alpha360", None, {"lr": 0.002, "optimizer": "adam", "batch_size": 4096, "input_dim": 360, "layers": (256,), "n_epochs": 400, "steps_per_epoch": 20, "early_stop": 50, "scheduler": "plateau", "weight_decay": 0.0}),
    "workflow_config_mlp_Alpha158.yaml": ("mlp", "alpha158", None, {"lr": 0.002, "batch_size": 8192, "input_dim": 157, "weight_decay": 0.0002, "n_epochs": 400}),
    "workflow_config_lstm_Alpha360.yaml": ("lstm", "alpha360", None, {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "lr": 0.001, "early_stop": 20, "batch_size": 800, "n_epochs": 200, "metric": "loss"}),
    "workflow_config_lstm_Alpha158.yaml": ("lstm", "alpha158", 20, {"d_feat": 20, "early_stop": 10, "batch_size": 800}),
    "workflow_config_gru_Alpha360.yaml": ("gru", "alpha360", None, {"d_feat": 6, "lr": 0.001, "early_stop": 20}),
    "workflow_config_gru_Alpha158.yaml": ("gru", "alpha158", 20, {"d_feat": 20, "lr": 0.0002, "early_stop": 10}),
    "workflow_config_alstm_Alpha360.yaml": ("alstm", "alpha360", None, {"d_feat": 6, "rnn_type": "GRU", "early_stop": 20}),
    "workflow_config_alstm_Alpha158.yaml": ("alstm", "alpha158", 20, {"d_feat": 20, "rnn_type": "GRU", "early_stop": 10}),
    "workflow_config_transformer_Alpha360.yaml": ("transformer", "alpha360", None, {"d_feat": 6, "d_model": 64, "nhead": 2, "num_layers": 2, "dropout": 0.0, "lr": 1e-4, "n_epochs": 100, "early_stop": 5, "batch_size": 2048, "weight_decay": 1e-3, "seed": 0}),
    "workflow_config_transformer_Alpha158.yaml": ("transformer", "alpha158", 20, {"d_feat": 20, "batch_size": 8192, "weight_decay": 1e-3, "lr": 1e-4}),
    "workflow_config_localformer_Alpha360.yaml": ("localformer", "alpha360", None, {"d_feat": 6, "d_model": 64, "batch_size": 2048, "weight_decay": 1e-3, "early_stop": 5}),
    "workflow_config_localformer_Alpha158.yaml": ("localformer", "alpha158", 20, {"d_feat": 20, "batch_size": 8192, "n_epochs": 100}),
    "workflow_config_sfm_Alpha360.yaml": ("sfm", "alpha360", None, {"output_dim": 32, "freq_dim": 25, "batch_size": 1600, "n_epochs": 20, "optimizer": "adam"}),
    "workflow_config_TabNet_Alpha360.yaml": ("tabnet", "alpha360", None, {"d_feat": 360, "pretrain": True, "seed": 993, "lr": 0.01, "batch_size": 4096, "vbs": 2048, "pretrain_n_epochs": 50, "ps": 0.3}),
    "workflow_config_TabNet_Alpha158.yaml": ("tabnet", "alpha158", None, {"d_feat": 158, "pretrain": True, "n_steps": 5, "relax": 1.3}),
}


@pytest.mark.parametrize("file", sorted(YAMLS))
def test_qlib_benchmark_yamls_load_and_match_the_presets(file):
    model, feature_set, step_len, expected = YAMLS[file]
    config = config_from_qlib_yaml(QLIB_CONFIGS / file)
    assert (config.model, config.feature_set, config.step_len) == (model, feature_set, step_len)
    assert {k: config.params[k] for k in expected} == expected
    assert config == model_config(model, feature_set)


def test_mlp_step_schedule_maps_onto_epochs():
    config = model_config("mlp", "alpha360", max_steps=1000, eval_steps=30, early_stop_rounds=7, scheduler=None)
    assert (config.params["n_epochs"], config.params["steps_per_epoch"], config.params["early_stop"]) == (34, 30, 7)
    assert config.params["scheduler"] is None


def _edited_yaml(tmp_path: Path, **kwargs) -> Path:
    document = yaml.safe_load((QLIB_CONFIGS / "workflow_config_lstm_Alpha360.yaml").read_text())
    document["task"]["model"]["kwargs"].update(kwargs)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_sise": 32}, "unknown hyper-parameter 'hidden_sise' = 32 for model 'lstm' \\(did you mean "
                              "hidden_size\\?\\)"),
        ({"batch_size": "800"}, "hyper-parameter batch_size = '800': must be an integer, not str"),
        ({"n_epochs": 0}, "hyper-parameter n_epochs = 0: must be > 0"),
        ({"lr": -0.001}, "hyper-parameter lr = -0.001: must be > 0"),
        ({"optimizer": "rmsprop"}, "hyper-parameter optimizer = 'rmsprop': must be one of adam, gd"),
        ({"loss": "mae"}, "hyper-parameter loss = 'mae': must be one of mse"),
        ({"dropout": 1.5}, "hyper-parameter dropout = 1.5: must be in \\[0, 1\\)"),
        ({"num_layers": 2.0}, "hyper-parameter num_layers = 2.0: must be an integer, not float"),
        ({"pretrain": True}, "hyper-parameter pretrain = True: model 'lstm' has no self-supervised pretraining"),
        ({"pretrain": "yes"}, "hyper-parameter pretrain = 'yes': must be true or false, not str"),
    ],
)
def test_invalid_hyper_parameters_are_named(tmp_path, kwargs, message):
    path = _edited_yaml(tmp_path, **kwargs)
    with pytest.raises(ConfigError, match=f"workflow.yaml: {message}"):
        config_from_qlib_yaml(path)


def test_yaml_structure_errors_are_named(tmp_path):
    document = yaml.safe_load((QLIB_CONFIGS / "workflow_config_lstm_Alpha158.yaml").read_text())
    document["task"]["dataset"]["kwargs"]["handler"]["class"] = "Alpha101"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="bad.yaml: task.dataset.kwargs.handler.class = 'Alpha101'"):
        config_from_qlib_yaml(path)
    del document["task"]["model"]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="bad.yaml: missing task.model.class"):
        config_from_qlib_yaml(path)


def test_qlibs_device_in_a_checkpoints_params_names_qpipes_way():
    """Found by a user: params {GPU: 0} in a checkpoint's run config said only "unknown hyper-parameter 'GPU'"."""
    with pytest.raises(ConfigError, match=r"mlp/alpha360: hyper-parameter GPU = 0: Qlib's device choice; qpipe's is "
                                          r"`device: cuda:0` in the checkpoint config \(beside params\), or QPIPE_DEVICE"):
        model_config("mlp", "alpha360", GPU=0)
    with pytest.raises(ConfigError, match="hyper-parameter n_jobs = 4: Qlib's DataLoader workers; qpipe has none"):
        model_config("lstm", "alpha360", n_jobs=4)


def test_a_checkpoints_params_read_as_qlib_writes_them_or_say_why_not(tmp_path):
    """Found in review: lr: 1e-4 in a run config (Qlib's GATs and HIST YAMLs write it so; Dagster's YAML 1.1 reads a
    string) was refused; feature_set Alpha158, Qlib's handler name, was refused; stock2concept in params was dropped in
    silence; a Qlib HIST YAML as qlib_yaml was always refused for its pickled model_path, which params could not
    override."""
    config = model_config("gats", "Alpha360", lr="1e-4")
    assert config.feature_set == "alpha360" and config.params["lr"] == 1e-4
    with pytest.raises(ConfigError, match="hyper-parameter lr = '0.001': must be a finite number, not str"):
        model_config("gats", "alpha360", lr="0.001")  # a string written as one stays refused
    with pytest.raises(ConfigError, match="hyper-parameter stock2concept = 'x.npy' is not read: the stock-to-concept "
                                          "matrix is built from raw/concepts"):
        model_config("hist", "alpha360", stock2concept="x.npy")
    hist = QLIB_CONFIGS / "workflow_config_hist_Alpha360.yaml"
    with pytest.raises(ConfigError, match="a pickled Qlib/PyTorch file is never loaded.*null in a checkpoint's params"):
        config_from_qlib_yaml(hist)
    assert config_from_qlib_yaml(hist, overrides={"model_path": None}).params["model_path"] is None


def test_flat_models_refuse_tsdataseth_windows():
    with pytest.raises(ConfigError, match="step_len = 20 \\(TSDatasetH\\) but model 'mlp' takes flat rows"):
        model_config("mlp", "alpha158", step_len=20)


def test_feature_width_must_match_the_network():
    config = model_config("lstm", "alpha158")  # d_feat 20
    data = frame(np.zeros((3, 19)), [f"F{i}" for i in range(19)])
    with pytest.raises(ValueError, match="d_feat = 20 but the frame has 19 feature columns"):
        make_frame_sampler(config, data, CPU)
    with pytest.raises(ValueError, match="input_dim = 157 but the frame has 19 feature columns"):
        make_frame_sampler(model_config("mlp", "alpha158"), data, CPU)
    with pytest.raises(ValueError, match="d_feat = 158 but the frame has 19 feature columns"):  # a flat model's
        make_frame_sampler(model_config("tabnet", "alpha158"), data, CPU)
