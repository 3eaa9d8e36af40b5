"""A network from outside qpipe becomes an architecture without an edit to qpipe (issue 16, point 4).

``plugin_example/`` is a package as a user writes one: a module with an ``nn.Module`` and its ``ModelSpec``, and
a pyproject.toml that registers it under the entry point group ``qpipe.models``. The test installs it as pip
would, on a path (the package beside its ``.dist-info`` with the entry point), and in a fresh interpreter
that has it on its path: the code location lists its four assets, a Qlib workflow YAML naming it the Qlib
way (``GeneralPTNN`` with ``pt_model_uri``) configures its checkpoint, which trains, scores, is reported on and
backtested.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from qpipe.models.config import ConfigError, config_from_qlib_yaml
from qpipe_tests.conftest import REPO

PLUGIN = Path(__file__).parent / "plugin_example"


def install_on_path(site: Path) -> None:
    """What ``pip install --target site`` leaves: the package, and a dist-info holding its entry points."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    shutil.copytree(PLUGIN / "qpipe_tinynet", site / "qpipe_tinynet")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
        for group, points in project["entry-points"].items()))


WORKFLOW = {  # the Qlib way: the generic trainer, its network by module path
    "task": {
        "model": {"class": "GeneralPTNN", "module_path": "qlib.contrib.model.pytorch_general_nn",
                  "kwargs": {"n_epochs": 3, "lr": 0.002, "batch_size": 256, "early_stop": 3,
                             "pt_model_uri": "qpipe_tinynet.TinyNet", "pt_model_kwargs": {"d_feat": 158, "hidden_size": 8}}},
        "dataset": {"class": "DatasetH", "kwargs": {"handler": {"class": "Alpha158", "kwargs": {
            "infer_processors": [{"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
                                 {"class": "Fillna", "kwargs": {"fields_group": "feature"}}],
            "learn_processors": [{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}]}}}},
    },
}

SCRIPT = """
import json, sys
import dagster as dg
import duckdb
from qpipe.definitions import defs
from qpipe_tests.test_model_assets import run, synthetic_resources
from pathlib import Path

root, workflow = Path(sys.argv[1]), sys.argv[2]
keys = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys() if "tinynet" in k.to_user_string())
resources = synthetic_resources(root, n_instruments=40, seed=5)
run("2023-06-01", "2024-02-29", ["raw/prices", "raw/universe", "raw/concepts"], resources)
run("2023-09-01", "2024-02-29", ["features/alpha158", "features/label"], resources)
config = {"qlib_yaml": workflow, "train_days": 60, "valid_days": 20}
run("2024-01-31", "2024-01-31", ["models/tinynet_checkpoint"], resources, {"models__tinynet_checkpoint": {"config": config}})
run("2024-02-01", "2024-02-29", ["predictions/tinynet_predictions", "reports/tinynet_ic", "reports/tinynet_backtest"], resources)
with duckdb.connect(resources["warehouse"].database, read_only=True) as con:
    scores = con.execute("SELECT count(DISTINCT date), count(*) FROM predictions.scores WHERE model = 'tinynet'").fetchone()
    ic_days = con.execute("SELECT count(*) FROM reports.daily_ic WHERE model = 'tinynet'").fetchone()[0]
    traded = con.execute("SELECT count(*) FROM reports.backtest_daily WHERE model = 'tinynet'").fetchone()[0]
print(json.dumps({"keys": keys, "score_days": scores[0], "scores": scores[1], "ic_days": ic_days, "traded": traded}))
"""


@pytest.mark.slow
def test_a_model_from_outside_qpipe_gets_its_assets_and_trains_from_a_qlib_workflow(tmp_path):
    site = tmp_path / "site"
    install_on_path(site)
    workflow = tmp_path / "workflow_config_tinynet_Alpha158.yaml"
    workflow.write_text(yaml.safe_dump(WORKFLOW))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "QPIPE_HOME": str(tmp_path / "qpipe"),
           "QPIPE_MARKET": "syn26"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "run"), str(workflow)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["keys"] == ["models/tinynet_checkpoint", "predictions/tinynet_predictions", "reports/tinynet_backtest",
                            "reports/tinynet_ic"]
    assert seen["score_days"] == 20 and seen["scores"] > 20 * 20 and seen["ic_days"] >= 17 and seen["traded"] == 20
    sidecar = json.loads((tmp_path / "run" / "checkpoints" / "tinynet" / "2024-01-31.json").read_text())
    assert sidecar["config"]["model"] == "tinynet" and sidecar["config"]["params"]["hidden_size"] == 8
    assert sidecar["config"]["params"]["n_epochs"] == 3 and len(sidecar["history"]) <= 3


@pytest.fixture
def tinynet(monkeypatch):
    """The example package registered in this process, as an installed distribution registers it."""
    from importlib.metadata import EntryPoint

    from qpipe.models import registry

    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.setitem(registry.PLUGINS, "tinynet", EntryPoint(name="tinynet", value="qpipe_tinynet:SPEC",
                                                                group=registry.ENTRY_POINT_GROUP))
    monkeypatch.setattr(registry, "ARCHITECTURES", (*registry.BUILTIN, "tinynet"))
    return registry


def _tinynet_workflow(tmp_path, file: str, network: dict) -> Path:
    from qpipe_tests.conftest import SHARED

    document = yaml.safe_load((SHARED / "qlib_configs" / file).read_text())
    document["task"]["model"] = {"class": "GeneralPTNN", "module_path": "qlib.contrib.model.pytorch_general_nn",
                                 "kwargs": {"n_epochs": 2, "pt_model_uri": "qpipe_tinynet.TinyNet", "pt_model_kwargs": network}}
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_dry_run_refuses_a_network_that_cannot_read_the_processed_columns(tmp_path, tinynet):
    """Found by a user: the README's d_feat 158 on Qlib's MLP Alpha158 workflow (DropCol leaves 157 columns) passed
    the dry-run, then failed at step 3 with 'mat1 and mat2 shapes cannot be multiplied'."""
    from qpipe.workflow.translate import translate

    with pytest.raises(ConfigError) as refused:
        translate(_tinynet_workflow(tmp_path, "workflow_config_mlp_Alpha158.yaml", {"d_feat": 158}))
    assert str(refused.value) == (f"{tmp_path / 'workflow.yaml'}: task.model.kwargs: the network TinyNet(d_feat=158, "
                                  "hidden_size=16, dropout=0.0) cannot read the 157 columns the processors leave: inputs "
                                  "[2, 157]: mat1 and mat2 shapes cannot be multiplied (2x157 and 158x16)")
    fits = translate(_tinynet_workflow(tmp_path, "workflow_config_mlp_Alpha158.yaml", {"d_feat": 157}))
    assert (fits.model.model, fits.model.params["d_feat"]) == ("tinynet", 157)


def test_a_spec_without_a_preset_for_the_workflows_feature_set_is_refused_before_the_run(tmp_path, tinynet, monkeypatch):
    """Found by a user: a spec with only an alpha158 preset on an Alpha360 YAML passed the dry-run ('tinynet on
    alpha360'), then step 3 failed: model 'tinynet' has no preset for feature set 'alpha360'."""
    import dataclasses

    import qpipe_tinynet

    from qpipe.workflow.translate import translate

    only_158 = dataclasses.replace(qpipe_tinynet.SPEC, presets={"alpha158": qpipe_tinynet.SPEC.presets["alpha158"]})
    monkeypatch.setattr(qpipe_tinynet, "SPEC", only_158)
    with pytest.raises(ConfigError, match=r"workflow.yaml: task.dataset.kwargs.handler.class = 'Alpha360': model "
                                          r"'tinynet' has no preset for feature set 'alpha360' \(its ModelSpec has "
                                          r"presets for alpha158; a spec needs a preset per feature set it accepts\)"):
        translate(_tinynet_workflow(tmp_path, "workflow_config_mlp_Alpha360.yaml", {"d_feat": 360}))


def test_the_readmes_example_runs_as_written():
    """The README's model package, exactly as written (its imports included), defines a spec qpipe builds and runs."""
    import torch

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Write your own model"):readme.index("### A Qlib workflow, translated")]
    namespace: dict = {}
    exec(compile(section.split("```python\n")[1].split("```")[0], "README.md", "exec"), namespace)
    spec = namespace["SPEC"]
    assert spec.name == "tinynet" and set(spec.presets) == {"alpha158", "alpha360"}
    assert spec.build(spec.presets["alpha360"].params)(torch.zeros(3, 360)).shape == (3,)


def test_a_qlib_workflow_names_its_network_by_module_path(tmp_path):
    """GeneralPTNN's default network is Qlib's GRU; a network no architecture has is refused with the way to add it."""
    path = tmp_path / "workflow.yaml"
    general = {"task": {"model": {"class": "GeneralPTNN", "kwargs": {"n_epochs": 2}},
                        "dataset": {"class": "TSDatasetH", "kwargs": {"handler": {"class": "Alpha158"}, "step_len": 20}}}}
    path.write_text(yaml.safe_dump(general))
    config = config_from_qlib_yaml(path)
    assert (config.model, config.step_len, config.params["d_feat"], config.params["hidden_size"]) == ("gru", 20, 6, 64)
    general["task"]["model"]["kwargs"]["input_dim"] = 157  # an MLP's: found in review, "for model 'gru'" said no more
    path.write_text(yaml.safe_dump(general))
    with pytest.raises(ConfigError, match=r"unknown hyper-parameter 'input_dim' = 157 for model 'gru'.* \(GeneralPTNN "
                                          r"without pt_model_uri trains its default network, qlib.contrib.model."
                                          r"pytorch_gru_ts.GRUModel: name pt_model_uri for another\)"):
        config_from_qlib_yaml(path)
    del general["task"]["model"]["kwargs"]["input_dim"]
    general["task"]["model"]["kwargs"]["pt_model_uri"] = "my_models.nets.MyNet"
    path.write_text(yaml.safe_dump(general))
    with pytest.raises(ConfigError, match=r"pt_model_uri = 'my_models.nets.MyNet' is the network of no qpipe "
                                          r"architecture: register it .* qpipe.models"):
        config_from_qlib_yaml(path)


@pytest.mark.parametrize("name, value, message", [
    ("TinyNet", "qpipe_tinynet:SPEC", "a model name is lower-case letters and digits"),
    ("gru", "qpipe_tinynet:SPEC", "the name 'gru' is taken by another architecture"),
])
def test_a_registration_qpipe_cannot_take_is_refused_naming_the_entry_point(monkeypatch, name, value, message):
    from importlib.metadata import EntryPoint

    from qpipe.models import registry

    point = EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point])
    with pytest.raises(registry.UnknownModelError, match=f"entry point {name} = {value} .*: {message}"):
        registry._plugins()


def test_an_entry_point_that_is_not_a_spec_is_refused_when_used(monkeypatch):
    from importlib.metadata import EntryPoint

    from qpipe.models import registry

    monkeypatch.setitem(registry.PLUGINS, "notaspec", EntryPoint(name="notaspec", value="json:dumps",
                                                                 group=registry.ENTRY_POINT_GROUP))
    with pytest.raises(registry.UnknownModelError, match="must name a qpipe.models.spec.ModelSpec whose name is 'notaspec'"):
        registry.get_spec("notaspec")


def test_the_dry_run_refuses_a_network_that_returns_more_than_one_score_per_sample(tmp_path, tinynet, monkeypatch):
    """Found in review: a network returning [B, 1] passed the dry-run, then trained on a loss broadcast over [B, B]."""
    import qpipe_tinynet
    import torch

    from qpipe.workflow.translate import translate

    monkeypatch.setattr(qpipe_tinynet.TinyNet, "forward",
                        lambda self, x: self.out(self.dropout(torch.tanh(self.hidden(x)))))
    with pytest.raises(ConfigError, match=r"the network TinyNet\(d_feat=157, hidden_size=16, dropout=0.0\) returns "
                                          r"scores of shape \[2, 1\] for inputs \[2, 157\]: it must return one score "
                                          r"per sample, shape \[2\]"):
        translate(_tinynet_workflow(tmp_path, "workflow_config_mlp_Alpha158.yaml", {"d_feat": 157}))


def test_a_plugin_that_does_not_import_is_named_and_leaves_the_other_architectures_usable(monkeypatch):
    """Found in review: one plugin whose module imports a missing package stopped every workflow (Qlib's own LSTM's
    too) with that module's bare traceback."""
    from importlib.metadata import EntryPoint

    from qpipe.models import registry

    monkeypatch.setitem(registry.PLUGINS, "broken", EntryPoint(name="broken", value="not_installed_pkg.models:SPEC",
                                                               group=registry.ENTRY_POINT_GROUP))
    monkeypatch.setattr(registry, "ARCHITECTURES", (*registry.BUILTIN, "broken"))
    named = r"entry point broken = not_installed_pkg.models:SPEC \(group qpipe.models\) could not be imported: " \
            r"ModuleNotFoundError: No module named 'not_installed_pkg'"
    with pytest.raises(registry.UnknownModelError, match=named):
        registry.get_spec("broken")
    assert registry.spec_for_qlib_class("LSTM").name == "lstm"
    with pytest.raises(registry.UnknownModelError, match=f"has no qpipe architecture; supported: .*; left out: {named}"):
        registry.spec_for_qlib_class("MyNet")


def test_a_network_argument_is_checked_by_its_type_hint_or_default_and_its_own_default_always_passes(monkeypatch):
    """Found in review: `padding: int = 0` could never be configured (its default refused as 'must be > 0'), and
    bool, str, optional and unannotated arguments were a TypeError."""
    import dataclasses
    from typing import Literal

    from torch import nn

    from qpipe.models.config import validated_config
    from qpipe.models.registry import get_spec

    class Net(nn.Module):
        def __init__(self, d_feat: int = 158, padding: int = 0, shift: int = -1, alpha: float = -0.5,
                     bias: bool = True, hidden: int | None = None, act="relu", norm: Literal["batch", "layer"] = "batch",
                     dropout: float = 0.1):
            super().__init__()

    spec = dataclasses.replace(get_spec("mlp"), name="net", net=Net)

    def config(**given):
        return validated_config(spec, "alpha158", None, given, "test").params

    defaults = config()
    assert {k: defaults[k] for k in ("padding", "shift", "alpha", "bias", "hidden", "act", "norm")} == {
        "padding": 0, "shift": -1, "alpha": -0.5, "bias": True, "hidden": None, "act": "relu", "norm": "batch"}
    assert config(padding=2, shift=-3, bias=False, hidden=64, act="gelu")["hidden"] == 64
    for given, message in ((dict(padding=-1), "padding = -1: must be >= 0"), (dict(d_feat=0), "d_feat = 0: must be > 0"),
                           (dict(bias="yes"), "bias = 'yes': must be true or false"),
                           (dict(hidden=0), "hidden = 0: must be > 0"), (dict(act=1), "act = 1: must be a string"),
                           (dict(dropout=1.5), r"dropout = 1.5: must be in \[0, 1\)")):
        with pytest.raises(ConfigError, match=message):
            config(**given)


def test_every_architecture_has_a_training_cost_a_new_one_the_unmeasured_cost():
    """Found in review: a model file added as the README said (its name in BUILTIN) stopped the code location loading:
    its training cost, which orders the steps, was looked up in BUILTIN_COST."""
    from qpipe.models import registry

    assert registry.training_costs(("mlp", "mycnn")) == {"mlp": registry.BUILTIN_COST["mlp"],
                                                         "mycnn": registry.UNMEASURED_COST}
    assert set(registry.TRAINING_COST) == set(registry.ARCHITECTURES)
