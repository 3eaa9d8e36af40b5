"""A checkpoint's run config, hyper-parameters and Qlib YAML, wrong in every way a user gets them wrong: each is
refused with a message that names the key and the value (and the file), and nothing is written: no checkpoint,
no change to the warehouse."""

import dagster as dg
import pytest

from qpipe.assets.features import feature_tables, label_table
from qpipe.assets.models import checkpoint_key, model_assets
from qpipe.assets.prices import raw_prices, raw_universe
from qpipe.data import warehouse as wh
from qpipe_tests.test_model_assets import QUICK, market_history

# The assets a checkpoint needs, not all forty: each case builds its job in a second instead of several.
MLP = [raw_prices, raw_universe, feature_tables, label_table,
       next(a for a in model_assets if checkpoint_key("mlp") in a.keys)]

DAY = "2024-01-31"
TABLES = ("raw.prices", "raw.universe", "features.alpha360", "features.label")
LSTM_YAML = """
task:
  model: {class: LSTM, module_path: qlib.contrib.model.pytorch_lstm_ts, kwargs: {d_feat: 6, hidden_size: 64}}
  dataset: {class: TSDatasetH, kwargs: {handler: {class: Alpha360}, step_len: 20}}
"""

MLP_YAML = """
task:
  model: {class: DNNModelPytorch, kwargs: {pt_model_kwargs: {input_dim: 360}}}
  dataset:
    class: DatasetH
    kwargs: {handler: {class: Alpha360, kwargs: {infer_processors: [{class: CSZFillna, kwargs: {fields_group: feature}}]}}}
"""


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "workflow_config.yaml"
    path.write_text(text)
    return str(path)


# case -> (the checkpoint's config, a function of tmp_path giving extra config, what the message must hold)
CASES = {
    "unknown feature set": ({"feature_set": "alpha999"}, None, "has no preset for feature set 'alpha999'"),
    "misspelt hyper-parameter": ({"params": {"hiden_size": 32}}, None, "unknown hyper-parameter 'hiden_size' = 32"),
    "hyper-parameter of the wrong type": ({"params": {"n_epochs": "ten"}}, None, "hyper-parameter n_epochs = 'ten'"),
    "negative learning rate": ({"params": {"lr": -0.1}}, None, "hyper-parameter lr = -0.1: must be > 0"),
    "unknown optimizer": ({"params": {"optimizer": "sgdx"}}, None, "hyper-parameter optimizer = 'sgdx': must be one of"),
    "unknown mixed precision": ({"params": {"amp": "fp16"}}, None, "hyper-parameter amp = 'fp16': must be one of bf16"),
    "negative weight decay": ({"params": {"weight_decay": -1}}, None, "hyper-parameter weight_decay = -1: must be >= 0"),
    "a train window below the minimum": ({"train_days": 5}, None, "train_days\n  Input should be greater than or equal to 20"),
    "a device that does not exist": ({"device": "tpu"}, None, "expected auto, cpu, cuda, cuda:<index> or mps, not 'tpu'"),
    "pretraining for a model without it": ({"params": {"pretrain": True}}, None, "model 'mlp' has no self-supervised"),
    "a time-series window for a flat model": ({"params": {"step_len": 20}}, None, "takes flat rows (DatasetH)"),
    "a batch larger than the training set": ({"params": {"batch_size": 1_000_000}}, None,
                                             "is fewer than one batch (batch_size 1000000): lower batch_size in the "
                                             "checkpoint's params, or train on more days (train_days)"),
    "a missing Qlib YAML": ({"qlib_yaml": "/nonexistent/workflow_config_mlp.yaml"}, None,
                            "/nonexistent/workflow_config_mlp.yaml: cannot read the workflow YAML"),
    "a YAML that does not parse": ({}, lambda p: {"qlib_yaml": _yaml(p, "task: [model: {class: MLP")},
                                   "cannot read the workflow YAML"),
    "a YAML without task.model": ({}, lambda p: {"qlib_yaml": _yaml(p, "qlib_init: {region: cn}\n")},
                                  "workflow_config.yaml: missing task.model.class"),
    "a YAML naming an unknown model class": ({}, lambda p: {"qlib_yaml": _yaml(p, LSTM_YAML.replace("LSTM", "XGBModel"))},
                                             "XGBModel"),
    "a YAML with an unknown handler": ({}, lambda p: {"qlib_yaml": _yaml(p, LSTM_YAML.replace("Alpha360", "Alpha999"))},
                                       "task.dataset.kwargs.handler.class = 'Alpha999'"),
    "a YAML with an unknown dataset class": ({}, lambda p: {"qlib_yaml": _yaml(p, LSTM_YAML.replace("TSDatasetH", "MyData"))},
                                             "task.dataset.class = 'MyData'; supported: DatasetH, TSDatasetH"),
    "a YAML for another model": ({}, lambda p: {"qlib_yaml": _yaml(p, LSTM_YAML)}, "configures 'lstm', not 'mlp'"),
    "a warm start from a missing checkpoint": ({"params": {"model_path": "/nonexistent/lstm/2024-01-02"}}, None,
                                               "/nonexistent/lstm/2024-01-02"),
    "an unknown processor": ({"infer_processors": [{"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature"}},
                                                   {"class": "MinMaxScaler"}]}, None,
                             "infer_processors[1]: unknown processor class 'MinMaxScaler'"),
    "a processor with a kwarg it does not take": ({"learn_processors": [{"class": "CSRankNorm", "kwargs": {"group": "label"}}]},
                                                  None, "learn_processors[0]: CSRankNorm got unexpected kwargs ['group']"),
    "a label filter among the infer processors": ({"infer_processors": [{"class": "DropnaLabel"}]}, None,
                                                  "infer_processors[0]: DropnaLabel drops rows by label"),
    "an unknown process type": ({"process_type": "parallel"}, None,
                                "process_type Input should be 'append' or 'independent'"),
    "a YAML naming an unknown processor": ({}, lambda p: {"qlib_yaml": _yaml(p, MLP_YAML.replace("CSZFillna", "CSZFill"))},
                                           "handler.kwargs: infer_processors[0]: unknown processor class 'CSZFill'"),
    "processors that train on columns a prediction lacks": (
        {"infer_processors": [{"class": "DropCol", "kwargs": {"col_list": ["CLOSE1"]}}, {"class": "Fillna"}],
         "learn_processors": [{"class": "DropnaLabel"}], "process_type": "independent"}, None,
        "the learn processors keep columns the infer processors drop (CLOSE1)"),
}
# Refused by the config's pydantic rules as Dagster builds it, before the step's code runs.
BUILDING_THE_CONFIG = {"a train window below the minimum"}
# Refused by Dagster's config system before the run starts: the key is named.
INVALID_CONFIG = {
    "an unknown config key": ({"epochs": 10}, 'unexpected config entry "epochs"'),
    "a value of the wrong type": ({"valid_days": "sixty"}, "valid_days"),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with market_history(tmp_path_factory.mktemp("bad_config"), "syn26", DAY) as built:
        yield built


def _train(resources, config: dict, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize(MLP, selection=[checkpoint_key("mlp")], resources=resources, partition_key=DAY,
                          run_config={"ops": {"models__mlp_checkpoint": {"config": config}}}, raise_on_error=raise_on_error)


def _stored(resources) -> dict:
    """Per table, its row count and an order-free digest of every row (DuckDB's row hash)."""
    import duckdb

    with duckdb.connect(resources["warehouse"].database, read_only=True) as con:
        return {table: con.execute(f"SELECT count(*), {wh.ROW_DIGEST.format('t')} FROM {table} t").fetchall()[0]
                for table in TABLES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_checkpoint_config_is_named_and_nothing_is_written(env, tmp_path, case):
    resources, root = env
    change, extra, message = CASES[case]
    config = {**QUICK, **change, **(extra(tmp_path) if extra else {})}
    before = _stored(resources)
    result = _train(resources, config, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    text = error.to_string()
    assert message in text, text[-2000:]
    # the message first, not under a chain of "caused by" (found in review: ~20 lines of stack around it); a value
    # pydantic refuses as Dagster builds the config comes before the step's code, under Dagster's wrapper
    assert case in BUILDING_THE_CONFIG or (error.cls_name == "Failure" and error.cause is None), text[-2000:]
    assert not (root / "checkpoints" / "mlp").exists()
    assert _stored(resources) == before


@pytest.mark.parametrize("case", sorted(INVALID_CONFIG))
def test_a_config_the_asset_does_not_take_is_refused_before_the_run(env, case):
    resources, root = env
    change, message = INVALID_CONFIG[case]
    before = _stored(resources)
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        _train(resources, {**QUICK, **change})
    assert message in str(refused.value)
    assert not (root / "checkpoints" / "mlp").exists()
    assert _stored(resources) == before


@pytest.mark.parametrize("profile", ["qlib", "quick"])
def test_every_training_profile_keeps_the_rules_of_the_checkpoint_config(profile):
    """Found in review: under QPIPE_TRAINING=quick, the launchpad's config took train_days 10 and valid_days 2 and
    trained on them (the profile's defaults were set with Fields that dropped ge=20 and ge=5)."""
    import pydantic

    from qpipe.assets.models import train_config

    config = train_config("mlp", profile)
    for field, value in (("train_days", 10), ("valid_days", 2), ("train_days", -5)):
        with pytest.raises(pydantic.ValidationError, match=f"{field}\n  Input should be greater than or equal to"):
            config(**{field: value})
    assert config().train_days >= 20


def test_a_null_hyper_parameter_is_qlibs_none_not_a_crash(env):
    """Found in review: `seed: null` (Qlib's unseeded default; model_path, scheduler and amp null likewise) crashed
    Dagster's config processing ("Null map member not caught in validation") before the run."""
    import json
    import shutil

    resources, root = env
    config = {**QUICK, "params": {**QUICK["params"], "n_epochs": 1, "seed": None, "model_path": None}}
    assert _train(resources, config).success
    sidecar = json.loads((root / "checkpoints" / "mlp" / f"{DAY}.json").read_text())
    assert sidecar["config"]["params"]["seed"] is None and isinstance(sidecar["seed"], int)  # drawn, and recorded
    shutil.rmtree(root / "checkpoints" / "mlp")  # the module's other cases expect no checkpoint
