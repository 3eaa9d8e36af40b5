"""``qpipe qrun WORKFLOW.yaml --dry-run`` (issue 16, point 1's report): every Qlib benchmark workflow translates;
each key is honoured, honoured with a named difference, or named as not honoured with the reason."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qpipe.models.config import ConfigError, read_qlib_yaml
from qpipe.workflow.translate import translate
from qpipe_tests.conftest import SHARED

CONFIGS = sorted((SHARED / "qlib_configs").glob("*.yaml"))
# What each benchmark YAML asks for that qpipe does not do. Every file: SigAnaRecord's ann_scaler (it scales the
# long-short figures qpipe does not report), and in most the device or worker count (qpipe picks the device).
NOT_HONOURED = {
    "mlp_Alpha158": {"task.model.kwargs.pt_model_kwargs", "task.dataset.kwargs.handler.kwargs.infer_processors",
                     "task.dataset.kwargs.handler.kwargs.learn_processors",
                     "task.dataset.kwargs.handler.kwargs.process_type"},  # DropCol, CSZFillna, DropnaProcessor
    "gats_Alpha158": {"task.model.kwargs.model_path"},  # a pickled pretrained LSTM
    "gats_Alpha360": {"task.model.kwargs.model_path"},
    "hist_Alpha360": {"task.model.kwargs.model_path"},
}
DEVICE_KEYS = {"task.model.kwargs.GPU", "task.model.kwargs.n_jobs"}


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem.removeprefix("workflow_config_") for p in CONFIGS])
def test_every_benchmark_workflow_translates_and_names_what_it_cannot_honour(path):
    workflow = translate(path)
    name = path.stem.removeprefix("workflow_config_")
    not_honoured = {e.key for e in workflow.not_honoured()}
    assert not_honoured - DEVICE_KEYS == {"task.record[1].kwargs.ann_scaler", *NOT_HONOURED.get(name, set())}
    # Nothing dropped in silence: each key of the file is in the report, itself or through a key above it.
    reported = {e.key for e in workflow.entries} | {"task.record"}
    document = yaml.safe_load(path.read_text())
    for leaf in _leaves(document):
        assert any(leaf == key or leaf.startswith(key + ".") for key in reported), leaf
    # The fixed split: one checkpoint on the session before the test segment, windows from the segments.
    assert str(workflow.checkpoint_day) == "2016-12-30" and str(workflow.test) == str(tuple(
        document["task"]["dataset"]["kwargs"]["segments"]["test"]))
    assert workflow.train_days == 1702 and workflow.valid_days == 486  # XSHG sessions; valid ends 2016-12-28
    assert workflow.settings == {"QPIPE_SOURCE": "qlib", "QPIPE_SOURCE_PATH": str(Path("~/.qlib/qlib_data/cn_data").expanduser()),
                                 "QPIPE_QLIB_MARKET": "csi300", "QPIPE_BENCHMARK": "SH000300",
                                 "QPIPE_PARTITIONS_START": "2007-09-28"}  # 61 sessions of history before start_time
    assert workflow.port_analysis == {"trade_unit": 100, "topk": 50, "n_drop": 5, "account": 100000000,
                                      "limit_threshold": 0.095, "deal_price": "close", "open_cost": 0.0005,
                                      "close_cost": 0.0015, "min_cost": 5}
    assert workflow.test_assets() == [f"predictions/{workflow.model.model}_predictions",
                                      f"reports/{workflow.model.model}_ic", f"reports/{workflow.model.model}_backtest"]
    changed = [e for e in workflow.entries if e.status == "changed"]
    assert [e.key for e in changed] == ["task.dataset.kwargs.segments.valid"] and "look-ahead" in changed[0].meaning


def test_the_console_script_prints_the_report_and_refuses_to_pretend_it_ran():
    qpipe = Path(sys.executable).with_name("qpipe")
    lstm = SHARED / "qlib_configs" / "workflow_config_lstm_Alpha360.yaml"
    dry = subprocess.run([qpipe, "qrun", lstm, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("workflow_config_lstm_Alpha360.yaml -> qpipe: lstm on alpha360")
    for line in ("  honoured (", "  changed (1):", "  not honoured (2):", "3. models/lstm_checkpoint on 2016-12-30",
                 "task.model.kwargs.GPU", "qpipe picks the device"):
        assert line in dry.stdout, line
    real = subprocess.run([qpipe, "qrun", lstm], capture_output=True, text=True, timeout=120)
    assert real.returncode == 2 and "not built yet" in real.stderr


def _edited(tmp_path, change) -> Path:
    document = read_qlib_yaml(SHARED / "qlib_configs" / "workflow_config_lstm_Alpha360.yaml")
    change(document)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _kwargs(d):
    return d["task"]["dataset"]["kwargs"]["handler"]["kwargs"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.clear() or d.update(steps=[1, 2]), "missing task.model.class"),
    (lambda d: d["task"]["model"].update({"class": "XGBModel"}), "'XGBModel' has no qpipe architecture"),
    (lambda d: d["task"]["dataset"]["kwargs"]["segments"].update(test=["2017-01-01", "2021-08-01"]),
     "segments.test = [2017-01-01, 2021-08-01] is not a span inside the handler's 2008-01-01..2020-08-01"),
    (lambda d: _kwargs(d)["infer_processors"][0]["kwargs"].update(clip=True),
     "infer_processors: RobustZScoreNorm got unexpected kwargs ['clip']"),
    (lambda d: d["task"]["record"][2]["kwargs"]["config"]["strategy"]["kwargs"].update(topk=0),
     "task.record[2].kwargs.config: topk = 0: Input should be greater than or equal to 1"),
    (lambda d: _kwargs(d).update(start_time="soon"), "start_time = 'soon' is not a date"),
])
def test_a_workflow_that_cannot_be_valid_is_refused_naming_file_key_and_value(tmp_path, change, message):
    path = _edited(tmp_path, change)
    with pytest.raises(ConfigError) as refused:
        translate(path)
    assert str(refused.value).startswith(str(path)) and message in str(refused.value)
