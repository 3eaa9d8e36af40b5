"""``qpipe qrun WORKFLOW.yaml --dry-run`` (issue 16, point 1's report): every Qlib benchmark workflow translates;
each key is honoured, honoured with a named difference, or named as not honoured with the reason."""

import copy
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from qpipe.models.config import ConfigError, read_qlib_yaml
from qpipe.workflow.translate import translate
from qpipe_tests.conftest import REPO, SHARED

QPIPE = Path(sys.executable).with_name("qpipe")  # the console script of this environment
CONFIGS = sorted((SHARED / "qlib_configs").glob("*.yaml"))
# What each benchmark YAML asks for that qpipe does not do. Every file: SigAnaRecord's ann_scaler (it scales the
# long-short figures qpipe does not report), and in most the device or worker count (qpipe picks the device).
NOT_HONOURED = {
    "gats_Alpha158": {"task.model.kwargs.model_path"},  # a pickled pretrained LSTM
    "gats_Alpha360": {"task.model.kwargs.model_path"},
    # its .npy files (found by a user: reported as honoured): the concepts come from raw/concepts
    "hist_Alpha360": {"task.model.kwargs.model_path", "task.model.kwargs.stock2concept", "task.model.kwargs.stock_index"},
    # no-ops in Qlib's SFM too, dropped (found by a user: reported as hyper-parameters of the checkpoint)
    "sfm_Alpha360": {"task.model.kwargs.dropout_W", "task.model.kwargs.dropout_U", "task.model.kwargs.eval_steps"},
}
DEVICE_KEYS = {"task.model.kwargs.GPU", "task.model.kwargs.n_jobs"}


@pytest.fixture(autouse=True)
def home_without_qlib_data(tmp_path, monkeypatch):
    """Qlib's YAMLs name ~/.qlib/qlib_data/cn_data, whose calendar (when it is there) sets the sessions a workflow
    means, and whose presence lets a run meant to be refused go on: HOME, for this process and the commands it
    starts, is an empty folder, so every machine reads the YAMLs alike."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


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
    assert [(str(c.day), c.train_days, c.valid_days) for c in workflow.checkpoints] == [("2016-12-30", 1702, 486)]
    # (XSHG sessions; valid ends 2016-12-28)
    assert [str(d) for d in workflow.test] == ["2017-01-03", "2020-07-31"]
    # the model as a home of every row of Qlib's table names it (QPIPE_MODELS=all,all_alpha158): lstm, lstm_alpha158
    model = workflow.model.model + ("_alpha158" if path.stem.endswith("_Alpha158") else "")
    assert workflow.name == model
    assert workflow.settings == {"QPIPE_SOURCE": "qlib", "QPIPE_SOURCE_PATH": str(Path("~/.qlib/qlib_data/cn_data").expanduser()),
                                 "QPIPE_QLIB_MARKET": "csi300", "QPIPE_BENCHMARK": "SH000300",
                                 "QPIPE_PARTITIONS_START": "2007-09-28",  # 61 sessions of history before start_time
                                 "QPIPE_MODELS": model}
    assert workflow.port_analysis == {"trade_unit": 100, "topk": 50, "n_drop": 5, "account": 100000000,
                                      "limit_threshold": 0.095, "deal_price": "close", "open_cost": 0.0005,
                                      "close_cost": 0.0015, "min_cost": 5}
    assert workflow.test_assets() == [f"predictions/{model}_predictions", f"reports/{model}_ic",
                                      f"reports/{model}_backtest"]
    changed = [e for e in workflow.entries if e.status == "changed"]
    assert changed[0].key == "task.dataset.kwargs.segments.valid" and "look-ahead" in changed[0].meaning
    # the MLP's batches: drawn without replacement, where Qlib's DNNModelPytorch draws with replacement
    assert [e.key for e in changed[1:]] == (["task.model.kwargs.batch_size"] if name.startswith("mlp") else [])
    _assert_honoured_segments_are_the_runs_windows(workflow)


def _assert_honoured_segments_are_the_runs_windows(workflow):
    """What a segment reported honoured names is the window the run trains on: windows_as_of's arithmetic (the
    checkpoint step's) on the same calendar, for the first checkpoint; never one after the test starts."""
    from qpipe.training.dataset import windows_as_of
    from qpipe.workflow.translate import _sessions

    document = read_qlib_yaml(workflow.path)
    days, _ = _sessions(Path(workflow.settings["QPIPE_SOURCE_PATH"]), document["qlib_init"].get("region", "cn"))
    first = workflow.checkpoints[0]
    windows = windows_as_of(days, first.day, first.train_days, first.valid_days)
    for name in ("train", "valid"):
        entry = next(e for e in workflow.entries if e.key == f"task.dataset.kwargs.segments.{name}")
        start, end = (np.datetime64(str(d), "D") for d in document["task"]["dataset"]["kwargs"]["segments"][name])
        sessions = days[(days >= start) & (days <= end)]
        real = tuple(str(d) for d in getattr(windows, name))
        assert (entry.status == "honoured") == (real == (str(sessions[0]), str(sessions[-1]))), (name, entry, real)
    assert np.datetime64(first.day, "D") < np.datetime64(workflow.test[0], "D")


def _segments(d, **given):
    d["task"]["dataset"]["kwargs"]["segments"].update(given)


def _entry(workflow, key):
    return next(e for e in workflow.entries if e.key == key)


def test_a_valid_segment_ending_before_the_test_is_honoured_with_an_earlier_checkpoint(tmp_path):
    """Found by a user: valid to 2016-06-30 was reported honoured while the run validated on the 364 sessions to
    2016-12-28. The checkpoint now sits where that segment's last label is known (2 sessions after it)."""
    from qpipe.workflow.translate import Rolling

    path = _edited(tmp_path, lambda d: _segments(d, valid=["2015-01-01", "2016-06-30"]))
    workflow = translate(path)
    assert [(str(c.day), c.train_days) for c in workflow.checkpoints] == [("2016-07-04", 1702)]  # Fri 07-01, Mon 07-04
    valid = _entry(workflow, "task.dataset.kwargs.segments.valid")
    assert (valid.status, valid.meaning) == ("honoured", f"valid_days {workflow.checkpoints[0].valid_days}")
    test = _entry(workflow, "task.dataset.kwargs.segments.test")
    assert "on 2016-07-04" in test.meaning and "newest checkpoint at or before it" in test.meaning
    assert not [e for e in workflow.entries if e.status == "changed"]
    _assert_honoured_segments_are_the_runs_windows(workflow)

    rolled = translate(path, Rolling(240, "ROLL_SD"))  # every checkpoint 240 sessions after the one before
    days = [c.day for c in rolled.checkpoints]
    assert len(days) == -(-rolled.test_sessions // 240) == 4 and days[0] == workflow.checkpoints[0].day
    xshg = _xshg_sessions()
    assert [xshg.index(str(b)) - xshg.index(str(a)) for a, b in zip(days, days[1:])] == [240, 240, 240]
    with_yaml = translate(_edited(tmp_path, lambda d: (_segments(d, valid=["2015-01-01", "2016-06-30"]),
                                                       d.update(rolling={"step": 240}))))
    lead = xshg.index("2016-12-30") - xshg.index("2016-07-04")
    assert f"each checkpoint is {lead} sessions before" in _entry(with_yaml, "rolling").meaning


def _xshg_sessions() -> list[str]:
    from qpipe.workflow.translate import _sessions

    return [str(d) for d in _sessions(Path("/nonexistent"), "cn")[0]]


def test_a_valid_segment_inside_the_train_segment_is_reported_as_the_shorter_train_window(tmp_path):
    path = _edited(tmp_path, lambda d: _segments(d, train=["2008-01-01", "2015-06-30"]))
    workflow = translate(path)
    train = _entry(workflow, "task.dataset.kwargs.segments.train")
    assert train.status == "changed" and "to 2014-12-31" in train.meaning and "do not overlap" in train.meaning
    _assert_honoured_segments_are_the_runs_windows(workflow)
    gap = translate(_edited(tmp_path, lambda d: _segments(d, train=["2008-01-01", "2014-06-30"])))
    assert _entry(gap, "task.dataset.kwargs.segments.train").meaning.endswith("qpipe's train window ends where valid starts)")


def test_region_us_trades_whole_shares_without_a_limit_as_qlibs_reg_us_and_reaches_the_backtest(tmp_path):
    """Found in review: region us backtested fractional shares (Qlib's REG_US: trade_unit 1, limit_threshold None);
    a null of the YAML could not reach the backtest at all (Dagster's run config holds no nulls)."""
    from qpipe.assets.models import PortfolioConfig

    def us(d):
        d["qlib_init"]["region"] = "us"
        del _backtest(d)["exchange_kwargs"]["limit_threshold"]

    workflow = translate(_edited(tmp_path, us))
    assert workflow.port_analysis["trade_unit"] == 1 and workflow.port_analysis["limit_threshold"] is None
    assert "trade_unit 1, limit_threshold None" in _entry(workflow, "qlib_init.region").meaning
    run_config = _test_stage(workflow).run_config["ops"]["reports__lstm_backtest"]["config"]
    assert run_config["port_analysis"]["limit_threshold"] == "none"
    resolved = PortfolioConfig(**run_config).resolve()
    assert resolved.limit_threshold is None and resolved.trade_unit == 1
    def no_benchmark(d):
        del d["benchmark"], _backtest(d)["benchmark"]

    equal_weighted = _entry(translate(_edited(tmp_path, no_benchmark)),
                            "task.record[2].kwargs.config.backtest.benchmark")
    assert equal_weighted.status == "changed" and equal_weighted.meaning.startswith("the equal-weighted market")
    explicit = translate(_edited(tmp_path, lambda d: _backtest(d)["exchange_kwargs"].update(limit_threshold=None)))
    assert explicit.port_analysis["limit_threshold"] == 0.095  # a null: the region's default, as Qlib's Exchange has it


def test_a_value_written_as_a_date_that_is_not_one_is_named_in_one_line(tmp_path):
    path = _edited(tmp_path, lambda d: None)
    path.write_text(path.read_text().replace("2014-12-31", "2014-13-31"))
    with pytest.raises(ConfigError, match=r"workflow.yaml: cannot read the workflow YAML: a value written as a date is "
                                          r"not one \(month must be in 1..12\)"):
        translate(path)


def test_dates_are_compared_as_the_sessions_they_mean(tmp_path):
    """Found by a user: fit_end_time was compared with the YAML's train segment, not the window the checkpoint fits
    its processors on; a backtest start_time on the test's first session was 'not honoured'; backtest and test
    end times of null (Qlib: to the end of the data) were refused; the dry-run cut its backtest settings short."""
    fit = "task.dataset.kwargs.handler.kwargs.fit_end_time"
    gap = translate(_edited(tmp_path, lambda d: _segments(d, train=["2008-01-01", "2013-12-31"])))  # train to 2014-12-31
    assert _entry(gap, fit).status == "honoured"  # fit_end_time 2014-12-31: the train window's last session
    early = translate(_edited(tmp_path, lambda d: (_segments(d, train=["2008-01-01", "2013-12-31"]),
                                                   _kwargs(d).update(fit_end_time="2013-12-31"))))
    assert _entry(early, fit).status == "not honoured" and "(2008-01-02..2014-12-31)" in _entry(early, fit).meaning

    def change(d):
        _backtest(d).update(start_time="2017-01-03", end_time=None)  # 2017-01-03: the first session of the test
        _segments(d, test=["2017-01-01", None])
        _backtest(d)["exchange_kwargs"]["deal_price"] = "$vwap"

    workflow = translate(_edited(tmp_path, change))
    config = "task.record[2].kwargs.config"
    assert _entry(workflow, f"{config}.backtest.start_time").status == "honoured"
    end = _entry(workflow, f"{config}.backtest.end_time")
    assert end.status == "honoured" and "predictions' dates" in end.meaning
    assert workflow.test[1] == workflow.span[1]  # the test runs to the end of the handler's span
    report = workflow.report()
    assert "deal_price=vwap" in report and "open_cost=0.0005" in report and "min_cost=5" in report


def test_a_test_segment_starting_inside_the_valid_segment_is_named_as_such(tmp_path):
    workflow = translate(_edited(tmp_path, lambda d: _segments(d, valid=["2015-01-01", "2017-03-31"])))
    valid = _entry(workflow, "task.dataset.kwargs.segments.valid")
    assert valid.status == "changed" and "runs into the test segment" in valid.meaning
    assert "look-ahead" not in valid.meaning and "to 2016-12-28" in valid.meaning
    assert [str(c.day) for c in workflow.checkpoints] == ["2016-12-30"]
    _assert_honoured_segments_are_the_runs_windows(workflow)


def test_the_mlps_n_epochs_is_named_as_not_read_and_max_steps_as_the_epochs_it_becomes(tmp_path):
    """Found by a user: n_epochs 5 beside max_steps 8000 was 'hyper-parameter of the checkpoint', and the run
    trained 400 epochs (DNNModelPytorch has no n_epochs)."""
    workflow = translate(_edited(tmp_path, lambda d: d["task"]["model"]["kwargs"].update(n_epochs=5),
                                 "workflow_config_mlp_Alpha158.yaml"))
    n_epochs, max_steps = (_entry(workflow, f"task.model.kwargs.{k}") for k in ("n_epochs", "max_steps"))
    assert n_epochs.status == "not honoured" and "max_steps decides" in n_epochs.meaning
    assert (max_steps.status, max_steps.meaning) == ("honoured", "n_epochs 400 of 20 steps (eval_steps)")
    assert workflow.model.params["n_epochs"] == 400


def test_the_handlers_default_chains_are_shown_and_an_open_end_time_is_the_calendars_last_session(tmp_path):
    """Found by a user: without infer/learn_processors the dry-run did not say which chains apply; end_time null
    (Qlib: to the end of the data) was refused as not a date."""
    def change(d):
        for key in ("infer_processors", "learn_processors"):
            del _kwargs(d)[key]
        _kwargs(d)["end_time"] = None
        _segments(d, test=["2017-01-01", "2020-08-01"])

    workflow = translate(_edited(tmp_path, change))
    handler = "task.dataset.kwargs.handler.kwargs"
    infer, learn = (_entry(workflow, f"{handler}.{k}") for k in ("infer_processors", "learn_processors"))
    assert (infer.status, infer.value) == ("honoured", "ProcessInf + ZScoreNorm + Fillna")  # Alpha360's own
    assert (learn.status, learn.value) == ("honoured", "DropnaLabel + CSZScoreNorm") and "the handler's default" in learn.meaning
    assert [c["class"] for c in workflow.processing.infer_processors] == ["ProcessInf", "ZScoreNorm", "Fillna"]
    end = _entry(workflow, f"{handler}.end_time")
    last = max(d for d in _xshg_sessions() if d <= str(datetime.date.today()))
    assert end.status == "honoured" and f"the calendar's last session, {last}" in end.meaning
    assert str(workflow.span[1]) == last


def test_the_yaml_rolling_key_is_reported_once(tmp_path):
    """Found by a user: rolling was honoured, and rolling.step / rolling.rtype 'not a key qpipe knows' as well."""
    workflow = translate(_edited(tmp_path, lambda d: d.update(rolling={"step": 40, "rtype": "ROLL_SD"})))
    assert [e.status for e in workflow.entries if e.key.startswith("rolling")] == ["honoured"]


def test_rolling_cuts_the_test_segment_into_windows_with_a_checkpoint_before_each(tmp_path):
    """RollingGen(step, rtype) from the command line or the YAML's rolling key: expanding or sliding train windows."""
    from qpipe.workflow.translate import Rolling, rolling_gen

    lstm = SHARED / "qlib_configs" / "workflow_config_lstm_Alpha360.yaml"
    expanding = translate(lstm, Rolling(240, "ROLL_EX"))
    assert [str(c.day) for c in expanding.checkpoints] == ["2016-12-30", "2017-12-25", "2018-12-19", "2019-12-16"]
    assert [c.train_days for c in expanding.checkpoints] == [1702, 1942, 2182, 2422]  # the train start stays
    assert {c.valid_days for c in expanding.checkpoints} == {486}
    sliding = translate(lstm, Rolling(240, "ROLL_SD"))
    assert [c.day for c in sliding.checkpoints] == [c.day for c in expanding.checkpoints]
    assert {c.train_days for c in sliding.checkpoints} == {1702}
    assert "each session scored by the newest checkpoint" in sliding.report()
    # found in review: fit_start_time and fit_end_time were "honoured" while each window fitted its own processors
    kwargs = "task.dataset.kwargs.handler.kwargs"
    assert [_entry(expanding, f"{kwargs}.{k}").status for k in ("fit_start_time", "fit_end_time")] == [
        "honoured", "changed"]
    assert [_entry(sliding, f"{kwargs}.{k}").status for k in ("fit_start_time", "fit_end_time")] == ["changed"] * 2
    assert _entry(sliding, f"{kwargs}.fit_end_time").meaning == (
        "each rolling checkpoint fits the processors on its own train window, whose end moves with it (Qlib's "
        "RollingGen keeps the template's fit_end_time: its normalization statistics)")
    from qpipe.workflow.run import stages

    # found in review: checkpoints an earlier workflow left in the store scored this one's test segment (an Alpha158
    # model two thirds of an Alpha360 workflow's): the test segment's predictions take this workflow's alone
    test_run = _test_stage(expanding)
    # found in review: the IC of the last two test sessions was missing (123 sessions where Qlib's has 125): their
    # labels are known after the segment, and Qlib's expressions read the prices after end_time for them
    tail = stages(expanding)[-2]
    assert expanding.labels_known == (datetime.date(2020, 8, 3), datetime.date(2020, 8, 4)) == expanding.ic_tail
    assert tail.keys == ["reports/lstm_ic"] and tail.tags == {"dagster/asset_partition_range_start": "2020-08-03",
                                                             "dagster/asset_partition_range_end": "2020-08-04"}
    assert [s.tags["dagster/asset_partition_range_end"] for s in stages(expanding)[:2]] == ["2020-08-04"] * 2
    assert test_run.run_config["ops"]["predictions__lstm_predictions"] == {
        "config": {"checkpoints": ["2016-12-30", "2017-12-25", "2018-12-19", "2019-12-16"]}}
    one_day = translate(lstm, Rolling(1))  # a checkpoint before every test session
    assert len(one_day.checkpoints) == one_day.test_sessions

    path = _edited(tmp_path, lambda d: d.update(rolling={"step": 240, "rtype": "sliding"}))
    in_yaml = translate(path)
    assert [c.train_days for c in in_yaml.checkpoints] == [1702] * 4
    assert next(e for e in in_yaml.entries if e.key == "rolling").meaning == "RollingGen(step=240, rtype=ROLL_SD)"
    overridden = translate(path, Rolling(480))
    assert len(overridden.checkpoints) == 2 and next(e for e in overridden.entries if e.key == "rolling").status == "changed"
    for bad, message in (({"step": 0}, "step = 0: a positive number of sessions"),
                         ({"step": 20, "rtype": "ROLL_XX"}, "rtype = 'ROLL_XX': ROLL_EX (expanding) or ROLL_SD"),
                         ({"steps": 20}, "rolling = {'steps': 20}: expected {step: N")):
        path = _edited(tmp_path, lambda d: d.update(rolling=bad))
        with pytest.raises(ConfigError, match=re.escape(message)):
            translate(path)
    with pytest.raises(ConfigError, match="step = -3"):
        rolling_gen(-3, "ROLL_EX", "--rolling-step")

def test_a_rolling_type_without_a_step_is_refused(capsys):
    """Found by a user: ``--rolling-type sliding`` without ``--rolling-step`` was ignored, exit 0."""
    from qpipe.cli import main as qpipe

    lstm = SHARED / "qlib_configs" / "workflow_config_lstm_Alpha360.yaml"
    assert qpipe(["qrun", str(lstm), "--dry-run", "--rolling-type", "sliding"]) == 2
    assert capsys.readouterr().err == "qpipe qrun: --rolling-type needs --rolling-step N (a checkpoint every N sessions)\n"
    assert qpipe(["qrun", str(lstm), "--dry-run", "--rolling-type", "sliding", "--rolling-step", "240"]) == 0


def test_the_console_script_prints_the_report_and_refuses_a_missing_provider_writing_nothing(tmp_path):
    lstm = SHARED / "qlib_configs" / "workflow_config_lstm_Alpha360.yaml"
    dry = subprocess.run([QPIPE, "qrun", lstm, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    home, report = dry.stdout.split("\n", 1)  # the workflow's own home (found in review: a second one overwrote it)
    assert home.startswith("warehouse and checkpoints: /") and home.endswith("/workflows/workflow_config_lstm_Alpha360")
    assert report.startswith("workflow_config_lstm_Alpha360.yaml -> qpipe: lstm on alpha360")
    for line in ("  honoured (", "  changed (1):", "  not honoured (2):", "3. models/lstm_checkpoint on 2016-12-30",
                 "task.model.kwargs.GPU", "qpipe picks the device",
                 "1. raw/prices, raw/universe, raw/concepts 2007-09-28..2020-08-04",
                 "4. predictions/lstm_predictions, reports/lstm_ic, reports/lstm_backtest 2017-01-03..2020-07-31\n"
                 "    5. reports/lstm_ic 2020-08-03..2020-08-04: the ICs of the test segment's last sessions, whose "
                 "labels are known after it (as Qlib reads them)\n"
                 "    6. reports/leaderboard, printed at the end"):  # the runs qrun makes (found by a user: 4 of 5)
        assert line in dry.stdout, line
    # found in review: a key that changes the figures was one line in a 40-line report; the last line names them all
    assert dry.stdout.rstrip().endswith("  not as Qlib runs it (3, above): task.dataset.kwargs.segments.valid, "
                                        "task.model.kwargs.GPU, task.record[1].kwargs.ann_scaler")
    # found in review: no quick run without editing the YAML; --epochs is one, named as a change from Qlib's run
    quick = subprocess.run([QPIPE, "qrun", lstm, "--dry-run", "--epochs", "2"], capture_output=True, text=True,
                           timeout=120)
    assert "    --epochs" in quick.stdout and "2 -> n_epochs 2, not the YAML's 200 (qpipe qrun --epochs" in quick.stdout
    assert quick.stdout.rstrip().endswith("task.record[1].kwargs.ann_scaler, --epochs"), quick.stdout[-300:]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "QPIPE_HOME": str(tmp_path / "qpipe")}
    (tmp_path / "dagster_home").mkdir()
    real = subprocess.run([QPIPE, "qrun", lstm], capture_output=True, text=True, timeout=120, env=env)
    assert real.returncode == 2 and "qlib_init.provider_uri" in real.stderr and "not a Qlib provider directory" in real.stderr
    assert not (tmp_path / "qpipe").exists() and list((tmp_path / "dagster_home").iterdir()) == []
    # found in review: without DAGSTER_HOME the run was refused after the report, saying not what to set
    unset = subprocess.run([QPIPE, "qrun", lstm], capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in env.items() if k != "DAGSTER_HOME"})
    assert unset.returncode == 2 and "DAGSTER_HOME is not set" in unset.stderr and "export DAGSTER_HOME" in unset.stderr
    never = subprocess.run([QPIPE, "qrun", lstm, "--records"], capture_output=True, text=True, timeout=120, env=env)
    assert never.returncode == 2 and f"no run of {lstm} in {tmp_path / 'qpipe' / 'workflows' / lstm.stem} yet" in \
        never.stderr, never.stderr
    # found in code review: a bad value of a setting the workflow replaces stopped even the dry run, with a traceback
    lake = subprocess.run([QPIPE, "qrun", lstm, "--dry-run"], capture_output=True, text=True, timeout=120,
                          env={**env, "QPIPE_LAKE": "x"})
    assert lake.returncode == 0 and "not inherited from the shell, as the workflow decides them: QPIPE_LAKE=x" in \
        lake.stdout, lake.stderr[-2000:]
    # a run that failed before its IC stage left a warehouse without records: said so (found in code review: a crash)
    home = tmp_path / "qpipe" / "workflows" / lstm.stem
    home.mkdir(parents=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute("CREATE SCHEMA raw; CREATE TABLE raw.prices (date DATE)")
    failed = subprocess.run([QPIPE, "qrun", lstm, "--records"], capture_output=True, text=True, timeout=120, env=env)
    assert failed.returncode == 1 and "holds no records of lstm's test segment" in failed.stderr, failed.stderr[-2000:]
    # a home holds one workflow's runs (found in code review: two workflows named config.yaml shared one)
    (home / "workflow.txt").write_text("/elsewhere/workflow_config_lstm_Alpha360.yaml\n")
    taken = subprocess.run([QPIPE, "qrun", lstm, "--records"], capture_output=True, text=True, timeout=120, env=env)
    assert taken.returncode == 2 and (f"{home} holds the runs of /elsewhere/workflow_config_lstm_Alpha360.yaml, "
                                      f"another workflow than {Path(lstm).resolve()}: run this one with --home "
                                      "NEW_FOLDER") in taken.stderr, taken.stderr[-2000:]


def test_dump_bin_writes_a_csv_source_as_the_provider_directory_a_workflow_reads(tmp_path, sp500):
    """Found in review: qrun reads a Qlib provider directory only, and a user with a CSV/Parquet source had to write
    one by hand (the dry run said a Parquet file that was there was 'not on this machine')."""
    from qpipe.data.qlib_provider import QlibSource
    from qpipe.data.tabular import TabularSource

    few = sp500[sp500["symbol"].isin(["AAPL", "MSFT", "XOM"]) & (pd.to_datetime(sp500["date"]) < "2014-01-01")]
    csv = tmp_path / "prices.csv"
    few.rename(columns={"symbol": "ticker"}).to_csv(csv, index=False)
    provider = tmp_path / "us_data"
    done = subprocess.run([QPIPE, "dump-bin", csv, provider, "--market", "sp3"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{provider}: 3 instruments, 269 sessions (2012-12-06..2013-12-31); markets all, sp3")
    stored = QlibSource(str(provider), market="sp3").prices()
    source = TabularSource(str(csv)).prices()
    pd.testing.assert_frame_equal(stored[source.columns], source, check_dtype=False, rtol=1e-6)  # float32 bins
    # found in review: no change.day.bin, so Qlib's backtest of the directory held no stock at a limit move
    change = np.fromfile(provider / "features" / "xom" / "change.day.bin", dtype="<f4")[1:]
    xom = source[source["instrument"] == "XOM"].sort_values("date")
    traded = (xom["close"] / xom["factor"]).to_numpy()
    np.testing.assert_allclose(change[1:], traded[1:] / traded[:-1] - 1, rtol=1e-5)
    assert np.isnan(change[0])
    from qpipe.data.qlib_provider import collector_change

    suspended = pd.DataFrame({"date": pd.bdate_range("2024-01-02", periods=4), "instrument": "A",
                              "close": [10.0, np.nan, 22.0, 22.0], "factor": [1.0, np.nan, 2.0, 2.0]})
    np.testing.assert_allclose(collector_change(suspended), [np.nan, np.nan, 0.1, 0.0])  # across the suspension
    dry = _edited(tmp_path, lambda d: d["qlib_init"].update(provider_uri=str(csv)))
    assert "not a Qlib provider directory here, no calendars/day.txt: a run refuses it; `qpipe dump-bin SOURCE DIR` " \
           "writes one" in translate(dry).report()
    # what the provider lacks is named before any run (found in review: after half a minute of prices and features)
    for change, message in ((lambda d: d.update(market="sp500"), "market = 'sp500': .*us_data has no "
                             "instruments/sp500.txt \\(its markets: all, sp3\\)"),
                            (lambda d: d.update(market="sp3", benchmark="^GSPC") or _backtest(d).update(benchmark="^GSPC"),
                             "backtest.benchmark = '\\^GSPC': .*us_data has no features/\\^gspc folder for it")):
        def edit(d, change=change):
            d["qlib_init"]["provider_uri"] = str(provider)
            change(d)
        with pytest.raises(ConfigError, match=message):
            translate(_edited(tmp_path, edit))
    # the index a workflow benchmarks against is written, and is no member of the markets (as QPIPE_BENCHMARK)
    indexed = tmp_path / "indexed"
    done = subprocess.run([QPIPE, "dump-bin", csv, indexed, "--market", "sp2", "--benchmark", "XOM"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "markets all, sp2 (instruments/*.txt; the benchmark XOM in features/ only)" in \
        done.stdout, done.stdout + done.stderr
    for market in ("all", "sp2"):
        assert (indexed / "instruments" / f"{market}.txt").read_text().split()[::3] \
            == ["AAPL", "MSFT"]
    assert (indexed / "features" / "xom" / "close.day.bin").exists()
    # and a workflow on its `all` market does not train on it (found in code review: every features/ folder was one)
    universe, _ = QlibSource(str(indexed), market="all", benchmark="XOM").reference()
    assert sorted(universe["instrument"]) == ["AAPL", "MSFT"]
    bad = subprocess.run([QPIPE, "dump-bin", csv, indexed, "--benchmark", "^GSPC"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "missing benchmark" in bad.stderr and "^GSPC" in bad.stderr, bad.stderr
    bad = subprocess.run([QPIPE, "dump-bin", tmp_path / "nowhere.csv", provider], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("qpipe dump-bin: source not found")


# Quick kwargs for a minute's run; every other key stays as Qlib's YAML has it.
QUICK_KWARGS = {"lstm_Alpha158": {"hidden_size": 8, "batch_size": 256},  # (and --epochs 1)
                "mlp_Alpha158": {"max_steps": 40, "batch_size": 256}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK_KWARGS))
def test_a_workflow_runs_end_to_end_on_a_provider_directory(tmp_path, monkeypatch, name):
    """Qlib's own workflow on a small CN provider (XSHG 2019), shortened segments and quick kwargs: the LSTM on
    Alpha158 through TSDatasetH (20-session windows of the 20 FilterCol columns), from the console script; the MLP
    on Alpha158 with its own processors (DropCol, CSZFillna; DropnaProcessor, CSZScoreNorm; independent), rolling,
    from the qlib_workflow job with the YAML in its run config, as the UI launches it."""
    from qpipe.calendar import exchange_calendar
    from qpipe.data.qlib_provider import read_calendar, write_qlib_provider
    from qpipe.data.synthetic import SyntheticSpec, generate_market

    provider = tmp_path / "cn_data"
    market = generate_market(SyntheticSpec(n_instruments=30, index_size=20, origin="2018-06-01"), start="2019-01-02",
                             end="2019-12-31", calendar=exchange_calendar("XSHG"))
    write_qlib_provider(market.prices, provider, market.universe)

    def shorten(d):
        d["qlib_init"]["provider_uri"] = str(provider)
        d["market"] = d["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["instruments"] = "syn20"
        del d["benchmark"]  # no index in this provider: the equal-weighted market is the benchmark
        # the test segment ends two sessions before the data: its last labels are known after it, as Qlib reads them
        _kwargs(d).update(start_time="2019-04-01", end_time="2019-12-27", fit_start_time="2019-04-01",
                          fit_end_time="2019-08-30")
        d["task"]["dataset"]["kwargs"]["segments"] = {"train": ["2019-04-01", "2019-08-30"],
                                                      "valid": ["2019-09-02", "2019-10-31"], "test": ["2019-11-01", "2019-12-27"]}
        d["task"]["model"]["kwargs"].update(QUICK_KWARGS[name])
        config = d["task"]["record"][2]["kwargs"]["config"]
        config["strategy"]["kwargs"].update(topk=5, n_drop=1)
        config["backtest"].update(start_time="2019-11-01", end_time="2019-12-27")
        del config["backtest"]["benchmark"]
        if name == "mlp_Alpha158":  # RollingGen: a checkpoint every 20 test sessions, the train window sliding
            d["rolling"] = {"step": 20, "rtype": "ROLL_SD"}

    path = _edited(tmp_path, shorten, f"workflow_config_{name}.yaml")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("QPIPE_HOME", str(tmp_path / "qpipe"))
    arch = name.split("_")[0]
    model = f"{arch}_alpha158"  # the variant's assets, as QPIPE_MODELS=all,all_alpha158 names them
    if name == "mlp_Alpha158":
        from qpipe.definitions import defs

        instance = dg.DagsterInstance.get()
        job = defs.resolve_job_def("qlib_workflow").execute_in_process(
            run_config={"ops": {"qrun": {"config": {"workflow": str(path)}}}}, instance=instance, raise_on_error=False)
        runs = "\n".join(e.message or "" for e in instance.all_logs(job.run_id) if e.step_key == "qrun")
        assert job.success, runs[-3000:]
        assert len(instance.get_runs()) == 9  # the job's, and the workflow's eight
        qpipe = tmp_path / "qpipe" / "workflows" / "workflow"  # the workflow's own warehouse and checkpoints
    else:
        # found in review: the shell's QPIPE_* settings were inherited (a benchmark, a warehouse elsewhere) though the
        # report said the YAML's; and a second workflow overwrote the first one's figures in the same QPIPE_HOME
        monkeypatch.setenv("QPIPE_BENCHMARK", "SH000300")  # no such index in this provider: the run would fail
        monkeypatch.setenv("QPIPE_WAREHOUSE", str(tmp_path / "elsewhere.duckdb"))
        done = subprocess.run([QPIPE, "qrun", path, "--epochs", "1"], capture_output=True, text=True, timeout=900,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs, qpipe = done.stdout, tmp_path / "qpipe" / "workflows" / "workflow"
        assert (f"not inherited from the shell, as the workflow decides them: QPIPE_BENCHMARK=SH000300, "
                f"QPIPE_WAREHOUSE={tmp_path / 'elsewhere.duckdb'}") in runs
        assert f"warehouse and checkpoints: {qpipe}" in runs and not (tmp_path / "elsewhere.duckdb").exists()
        again = subprocess.run([QPIPE, "qrun", path, "--records"], capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
        assert again.returncode == 0 and again.stdout.strip() in runs and "SigAnaRecord (" in again.stdout, \
            again.stdout + again.stderr
    assert f"workflow.yaml -> qpipe: {arch} on alpha158" in runs and "not honoured (" in runs
    n = 8 if name == "mlp_Alpha158" else 6  # three checkpoints when rolling
    for stage in (f"[1/{n}] prices and universe", f"[3/{n}] {model} checkpoint on 2019-10-31",
                  f"[{n - 2}/{n}] test segment 2019-11-01..2019-12-27",
                  f"[{n - 1}/{n}] IC of the test segment's last sessions, their labels known 2019-12-30..2019-12-31",
                  f"[{n}/{n}] leaderboard", "Out-of-sample leaderboard"):
        assert stage in runs, stage
    # what Qlib's records print, for the test segment (found in review: qrun ended on the leaderboard alone)
    records = runs[runs.index("Qlib's records of the test segment 2019-11-01..2019-12-27"):]
    assert "SigAnaRecord (" in records and "'Rank ICIR': " in records, records
    for title in ("benchmark return", "the excess return without cost", "the excess return with cost", "indicators"):
        assert f"'The following are analysis results of {title}(1day).'" in records, title
    assert re.search(r"ffr\s+1\.000000\npa\s+0\.000000\npos\s+0\.000000", records), records
    sessions = [str(d) for d in np.asarray(read_calendar(provider)).astype("datetime64[D]")]
    test = [d for d in sessions if "2019-11-01" <= d <= "2019-12-27"]
    with duckdb.connect(str(qpipe / "warehouse.duckdb"), read_only=True) as con:
        predicted = [str(d) for (d,) in con.execute("SELECT DISTINCT date FROM predictions.scores ORDER BY 1").fetchall()]
        traded = [str(d) for (d,) in con.execute("SELECT date FROM reports.backtest_daily ORDER BY 1").fetchall()]
        ic_days = [str(d) for (d,) in con.execute("SELECT date FROM reports.daily_ic ORDER BY 1").fetchall()]
        held = con.execute("SELECT mode(holdings) FROM reports.backtest_daily").fetchone()[0]  # topk (more when a sale is blocked)
        used = dict(con.execute("SELECT DISTINCT date::VARCHAR, checkpoint_partition FROM predictions.scores").fetchall())
    assert predicted == test and traded == test and ic_days == test and held == 5  # an IC of every test session
    windows = [sessions[sessions.index("2019-10-31") + k] for k in (0, 20, 40)] if name == "mlp_Alpha158" else ["2019-10-31"]
    assert used == {day: max(w for w in windows if w <= day) for day in test}  # the newest checkpoint by that close
    assert sorted(p.stem for p in (qpipe / "checkpoints" / model).glob("*.json")) == windows
    sidecar = json.loads((qpipe / "checkpoints" / model / "2019-10-31.json").read_text())
    valid_end = sessions[sessions.index("2019-10-31") - 2]  # the last label known at the checkpoint's close
    assert sidecar["windows"] == {"train": ["2019-04-01", "2019-08-30"], "valid": ["2019-09-02", valid_end]}
    state = sidecar["processor_state"]  # the YAML's chains, fitted on the train window and saved
    chains = {key: [p["class"] for p in state[key]["processors"]] for key in ("infer", "learn")}
    if name == "mlp_Alpha158":
        assert chains == {"infer": ["DropCol", "CSZFillna"],
                          "learn": ["DropCol", "DropnaProcessor", "DropnaLabel", "CSZScoreNorm"]}
        assert state["process_type"] == "independent" and len(sidecar["columns"]) == 157 and "VWAP0" not in sidecar["columns"]
        assert sidecar["config"]["params"]["input_dim"] == 157 and sidecar["config"]["params"]["n_epochs"] == 2
    else:
        assert chains == {"infer": ["FilterCol", "RobustZScoreNorm", "Fillna"], "learn": ["DropnaLabel", "CSRankNorm"]}
        assert sidecar["config"]["step_len"] == 20 and len(sidecar["columns"]) == 20
        assert sidecar["config"]["params"]["hidden_size"] == 8 and sidecar["config"]["params"]["n_epochs"] == 1


def _test_stage(workflow):
    from qpipe.workflow.run import stages

    return next(stage for stage in stages(workflow) if stage.title.startswith("test segment"))


def _edited(tmp_path, change, file: str = "workflow_config_lstm_Alpha360.yaml") -> Path:
    document = read_qlib_yaml(SHARED / "qlib_configs" / file)
    change(document)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _kwargs(d):
    return d["task"]["dataset"]["kwargs"]["handler"]["kwargs"]


def _strategy(d):
    return d["task"]["record"][2]["kwargs"]["config"]["strategy"]


def _backtest(d):
    return d["task"]["record"][2]["kwargs"]["config"]["backtest"]


def _records(d):
    return d["task"]["record"]


def test_qlib_arguments_qpipe_does_not_implement_are_named_and_dollar_prices_are_qlibs(tmp_path):
    """Names Qlib's strategy and exchange take stay 'not honoured' with the reason; deal_price '$open' is Qlib's
    'open'; n_drop 0 is a deliberate departure (Qlib sells every holding each day)."""
    def change(d):
        _strategy(d)["kwargs"].update(trade_exchange=None, n_drop=0)
        _backtest(d)["exchange_kwargs"].update(deal_price="$open", volume_threshold=None, impact_cost=0.1, freq="day")

    workflow = translate(_edited(tmp_path, change))
    config = "task.record[2].kwargs.config"
    assert {e.key: e.meaning for e in workflow.not_honoured() if e.key.startswith(config)} == {
        f"{config}.strategy.kwargs.trade_exchange": "Qlib's backtest infrastructure: qpipe's backtest builds its own "
                                                    "exchange and calendar",
        f"{config}.backtest.exchange_kwargs.volume_threshold": "qpipe's exchange has no volume limit",
        f"{config}.backtest.exchange_kwargs.impact_cost": "qpipe's exchange has no market impact cost (Qlib's default "
                                                          "impact_cost: 0)",
        f"{config}.backtest.exchange_kwargs.freq": "qpipe's exchange is daily (Qlib's default freq: day)"}
    assert workflow.port_analysis["deal_price"] == "open" and workflow.port_analysis["n_drop"] == 0
    n_drop = _entry(workflow, f"{config}.strategy.kwargs.n_drop")
    assert n_drop.status == "changed" and "comb[-0:]" in n_drop.meaning


@pytest.mark.parametrize("change, message", [
    (lambda d: d.clear() or d.update(steps=[1, 2]), "missing task.model.class"),
    (lambda d: d["task"]["model"].update({"class": "XGBModel"}), "'XGBModel' has no qpipe architecture"),
    (lambda d: d["task"]["dataset"]["kwargs"]["segments"].update(test=["2017-01-01", "2021-08-01"]),
     "segments.test = [2017-01-01, 2021-08-01] is not a span inside the handler's 2008-01-01..2020-08-01"),
    (lambda d: _kwargs(d)["infer_processors"][0]["kwargs"].update(clip=True),
     "task.dataset.kwargs.handler.kwargs: infer_processors[0]: RobustZScoreNorm got unexpected kwargs ['clip']"),
    (lambda d: d["task"]["record"][2]["kwargs"]["config"]["strategy"]["kwargs"].update(topk=0),
     "task.record[2].kwargs.config: topk = 0: Input should be greater than or equal to 1"),
    (lambda d: _kwargs(d).update(start_time="soon"), "start_time = 'soon' is not a date"),
    # found in review: "is not a span inside the handler's 2008-01-01..2020-08-01", though both dates were
    (lambda d: _segments(d, valid=["2016-12-31", "2015-01-01"]),
     "segments.valid = [2016-12-31, 2015-01-01]: the start is after the end"),
    # misspelt: Qlib's TopkDropoutStrategy raises TypeError, its Exchange ValueError (found by a user: exit 0)
    (lambda d: _strategy(d)["kwargs"].update(hold_threshh=3),
     "task.record[2].kwargs.config.strategy.kwargs.hold_threshh = 3: not an argument of Qlib's TopkDropoutStrategy "
     "(Qlib refuses it) (did you mean hold_thresh?)"),
    (lambda d: _backtest(d)["exchange_kwargs"].update(min_costt=5),
     "config.backtest.exchange_kwargs.min_costt = 5: not an argument of Qlib's Exchange (Qlib refuses it) "
     "(did you mean min_cost?)"),
    (lambda d: _backtest(d).update(acount=1e9), "config.backtest.acount = 1000000000.0: not an argument of Qlib's "
     "backtest (Qlib refuses it) (did you mean account?)"),
    (lambda d: _strategy(d).update({"class": "WeightStrategyBase"}), "config.strategy.class = 'WeightStrategyBase': "
     "qpipe backtests only TopkDropoutStrategy (remove the PortAnaRecord or use that strategy)"),
    # the network cannot read what the processors leave (found by a user: 'honoured', then refused by the run)
    (lambda d: d["task"]["model"]["kwargs"].update(d_feat=7), "the network LSTMModel(d_feat=7, hidden_size=64, "
     "num_layers=2, dropout=0.0) cannot read the 360 columns the processors leave: a sequence model cuts a row into "
     "d_feat blocks of lags (Qlib's reshape), and these are 6 fields (CLOSE, OPEN, HIGH, LOW, VWAP, VOLUME) of 60 lags: "
     "d_feat must be 6, not 7"),
    (lambda d: d["task"]["model"]["kwargs"].update(d_feat=5), "d_feat must be 6, not 5"),
    (lambda d: _backtest(d)["exchange_kwargs"].update(open_cost=-0.01),
     "config: open_cost = -0.01: Input should be greater than or equal to 0"),
    # found in review: a record's kwargs were never read (exit 0, none of them in the report); Qlib's __init__
    # raises TypeError on a name it does not take (PortAnaRecord's **kwargs reach ACRecordTemp, which takes none)
    (lambda d: _records(d)[1]["kwargs"].update(ana_long_shrt=False), "task.record[1].kwargs.ana_long_shrt = False: "
     "not an argument of Qlib's SigAnaRecord (Qlib refuses it: TypeError) (did you mean ana_long_short?)"),
    (lambda d: _records(d)[0]["kwargs"].update(dataset_typo=1), "task.record[0].kwargs.dataset_typo = 1: not an "
     "argument of Qlib's SignalRecord (Qlib refuses it: TypeError) (did you mean dataset?)"),
    (lambda d: _records(d)[2]["kwargs"].update(risk_analysis_frq="day"), "task.record[2].kwargs.risk_analysis_frq = "
     "day: not an argument of Qlib's PortAnaRecord (Qlib refuses it: TypeError) (did you mean risk_analysis_freq?)"),
    (lambda d: _records(d)[1]["kwargs"].update(label_col=1), "task.record[1].kwargs.label_col = 1: the label has one "
     "column"),
    (lambda d: _records(d)[2]["kwargs"].update(indicator_analysis_method="value_weigted"), "indicator_analysis_method "
     "= 'value_weigted': not a method of Qlib's indicator_analysis (Qlib: KeyError) (did you mean value_weighted?)"),
    (lambda d: _records(d)[2]["kwargs"].update(risk_analysis_freq="weak"), "risk_analysis_freq = 'weak': 'weak' is "
     "not a frequency of Qlib's"),
    (lambda d: _records(d)[1].update(module_path="qlib.workflow.record_tmp"), "task.record[1].module_path = "
     "'qlib.workflow.record_tmp': no such module (Qlib: ModuleNotFoundError) (did you mean "
     "qlib.workflow.record_temp?)"),
    # found in review: an unknown record ran with rc 0 and no IC (Qlib: AttributeError)
    (lambda d: _records(d)[1].update({"class": "SigAnaRecrod"}), "task.record[1].class = 'SigAnaRecrod': "
     "qlib.workflow.record_temp has no such record (Qlib: AttributeError) (did you mean SigAnaRecord?)"),
    # found in review: "not a key qpipe knows: ignored", and the run trained with the default processors
    (lambda d: _kwargs(d).update(infer_processor=_kwargs(d).pop("infer_processors")),
     "handler.kwargs.infer_processor = "),
    (lambda d: _kwargs(d).update(infer_processor=_kwargs(d).pop("infer_processors")),
     ": not an argument of Qlib's Alpha360 (Qlib refuses it: TypeError) (did you mean infer_processors?)"),
    (lambda d: _kwargs(d).update(data_loader={"class": "QlibDataLoader"}), "handler.kwargs.data_loader = {'class': "
     "'QlibDataLoader'}: not an argument of Qlib's Alpha360"),
])
def test_a_workflow_that_cannot_be_valid_is_refused_naming_file_key_and_value(tmp_path, change, message):
    path = _edited(tmp_path, change)
    with pytest.raises(ConfigError) as refused:
        translate(path)
    assert str(refused.value).startswith(str(path)) and message in str(refused.value)


def test_the_benchmark_and_the_label_are_those_qlib_reads(tmp_path):
    """Found in review: the top-level `benchmark` (an anchor in Qlib's files, read by nothing) overrode the
    backtest's, which Qlib reads; Qlib's tuple form of its own label was reported as another label, and another
    label trained on qpipe's all the same, with a note."""
    edited = translate(_edited(tmp_path, lambda d: _backtest(d).update(benchmark="SH000905")))
    assert edited.settings["QPIPE_BENCHMARK"] == "SH000905"
    top = _entry(edited, "benchmark")
    assert top.status == "not honoured" and top.meaning == "Qlib reads the backtest's benchmark, 'SH000905', not this key"
    assert _entry(edited, "task.record[2].kwargs.config.backtest.benchmark").status == "honoured"
    with pytest.raises(ConfigError, match=r"backtest.benchmark = \['SH000300', 'SH000905'\]: qpipe's benchmark is "
                                          "one instrument"):
        translate(_edited(tmp_path, lambda d: _backtest(d).update(benchmark=["SH000300", "SH000905"])))

    qlib_form = [["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]]  # Alpha158's get_label_config
    labelled = translate(_edited(tmp_path, lambda d: _kwargs(d).update(label=qlib_form)))
    assert _entry(labelled, "task.dataset.kwargs.handler.kwargs.label").status == "honoured"
    with pytest.raises(ConfigError, match=r"handler.kwargs.label = \['Ref\(\$close, -6\) / Ref\(\$close, -1\) - 1'\]: "
                                          r"qpipe trains on, and reports the IC against, one label"):
        translate(_edited(tmp_path, lambda d: _kwargs(d).update(label=["Ref($close, -6) / Ref($close, -1) - 1"])))

    def misspelt(d):
        kwargs = d["task"]["dataset"]["kwargs"]
        kwargs["segmetns"] = kwargs.pop("segments")

    with pytest.raises(ConfigError, match=r"missing task.dataset.kwargs.segments.train \(did you mean segmetns\?\)"):
        translate(_edited(tmp_path, misspelt))
    # found in review: a test segment before the train segment was "588 train and -526 valid sessions"
    with pytest.raises(ConfigError, match=r"segments.test starts at 2009-01-05, not after the valid segment's start "
                                          r"\(2015-01-01\): the segments go train, valid, test, in time"):
        translate(_edited(tmp_path, lambda d: _segments(d, test=["2009-01-05", "2009-12-31"])))


def test_sig_ana_record_counts_the_sessions_its_ic_is_of():
    """Found in review: a collapsed model (every score equal, no IC on 358 of 359 days) printed "359 sessions with a
    known label" beside the IC of its one day."""
    from qpipe.evaluation import report
    from qpipe.workflow.records import qlib_records

    con = duckdb.connect()
    con.execute("CREATE SCHEMA reports")
    con.execute(f"CREATE TABLE {report.DAILY_IC} ({report.DAILY_IC_DDL})")
    days = [datetime.date(2024, 1, d) for d in (2, 3, 4)]
    frame = pd.DataFrame({"model": "mlp", "date": days, "known_on": days, "IC": [0.1, np.nan, np.nan],
                          "Rank IC": [0.2, np.nan, np.nan], "n": 30})
    con.execute(f"INSERT INTO {report.DAILY_IC} SELECT * FROM frame")
    printed = qlib_records(con, "mlp", days[0], days[-1], signal=True, portfolio=False)
    assert "SigAnaRecord (1 sessions with an IC, of 3 with a known label): {'IC': 0.1, 'ICIR': nan" in printed, printed


def test_the_records_of_a_home_run_before_variants_are_found_under_the_architecture(tmp_path, capsys):
    """Found in review: qrun now names Qlib's LSTM Alpha158 workflow lstm_alpha158, and `--records` of a home an
    earlier qpipe ran (its scores stored as lstm) said it held no records of the test segment."""
    from qpipe.evaluation import report
    from qpipe.workflow.records import print_records

    workflow = translate(SHARED / "qlib_configs" / "workflow_config_lstm_Alpha158.yaml")
    assert workflow.name == "lstm_alpha158"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("CREATE SCHEMA reports")
        con.execute(f"CREATE TABLE {report.DAILY_IC} ({report.DAILY_IC_DDL})")
        days = [workflow.test[0], workflow.test[0] + datetime.timedelta(days=1)]
        frame = pd.DataFrame({"model": "lstm", "date": days, "known_on": days, "IC": [0.1, 0.2],
                              "Rank IC": [0.2, 0.1], "n": 30})
        con.execute(f"INSERT INTO {report.DAILY_IC} SELECT * FROM frame")
    assert print_records(workflow, tmp_path / "warehouse.duckdb")
    printed = capsys.readouterr().out
    assert f"Qlib's records of the test segment {workflow.test[0]}..{workflow.test[1]} (lstm):" in printed
    assert printed.strip().endswith("(stored as lstm by an earlier qpipe, which named the model after its "
                                    "architecture alone; a run now stores it as lstm_alpha158)")


def test_a_top_level_block_task_does_not_refer_to_is_one_line_not_one_per_key(tmp_path):
    """Found in review: with PortAnaRecord removed, each of port_analysis_config's 14 keys was reported as "not a
    key qpipe knows: ignored"; Qlib reads it only through the record."""
    workflow = translate(_edited(tmp_path, lambda d: d["task"]["record"].pop(2)))
    left = [e for e in workflow.entries if e.key.startswith("port_analysis_config")]
    assert [(e.key, e.status, e.meaning) for e in left] == [
        ("port_analysis_config", "not honoured", "nothing in task refers to it: Qlib does not read it either")]
    assert _entry(workflow, "data_handler_config").status == "honoured"  # still read, through the handler


def test_a_null_benchmark_and_qruns_sys_paths_are_named_for_what_they_are(tmp_path):
    """Found in review: `backtest.benchmark: null` was refused as "not an argument of Qlib's backtest", and qrun's
    `sys: {rel_path: [...]}` reported as a block Qlib does not read."""
    def edit(d):
        _backtest(d)["benchmark"] = None
        d["sys"] = {"rel_path": ["."]}

    workflow = translate(_edited(tmp_path, edit))
    null = _entry(workflow, "task.record[2].kwargs.config.backtest.benchmark")
    assert null.status == "changed" and null.meaning.endswith("(Qlib's backtest, given null, with none: a zero return)")
    assert _entry(workflow, "sys").meaning.startswith("Qlib's qrun adds these paths to sys.path")


def test_the_records_arguments_qlib_takes_are_each_reported(tmp_path):
    """Found in review: task.record was marked read whole, so PortAnaRecord's indicator_analysis_method and
    risk_analysis_freq (qpipe prints the daily analysis, by Qlib's method mean) were in no line of the report."""
    def change(d):
        _records(d)[2]["kwargs"].update(indicator_analysis_method="value_weighted", risk_analysis_freq="week",
                                        indicator_analysis_freq=["day"], skip_existing=True)
        _records(d)[1]["kwargs"].update(label_col=0)

    workflow = translate(_edited(tmp_path, change))
    record = "task.record[2].kwargs"
    method, risk = (_entry(workflow, f"{record}.{k}") for k in ("indicator_analysis_method", "risk_analysis_freq"))
    assert method.status == "not honoured" and "Qlib's method mean" in method.meaning
    assert risk.status == "not honoured" and "the 1week report is not found" in risk.meaning
    assert [_entry(workflow, k).status for k in (f"{record}.indicator_analysis_freq", f"{record}.skip_existing",
                                                 "task.record[1].kwargs.label_col", "task.record[1].module_path",
                                                 "task.record[0].kwargs.model")] == ["honoured"] * 5
    assert f"{record}.indicator_analysis_method, {record}.risk_analysis_freq" in workflow.report().splitlines()[-1]
    # Qlib's own records qpipe does not run stay named, as Qlib runs them
    other = translate(_edited(tmp_path, lambda d: _records(d).append({"class": "MultiPassPortAnaRecord"})))
    assert _entry(other, "task.record[3]").status == "not honoured"
    # so does a user's own record, which Qlib imports and runs (found in code review: it was refused)
    own = translate(_edited(tmp_path, lambda d: _records(d).append({"class": "MyRecord", "module_path": "my.records"})))
    assert (_entry(own, "task.record[3]").value, _entry(own, "task.record[3]").status) == ("my.records.MyRecord",
                                                                                         "not honoured")
    # a class written with its module, as Qlib also reads it
    dotted = translate(_edited(tmp_path, lambda d: _records(d)[2].update(
        {"class": "qlib.workflow.record_temp.PortAnaRecord"})))
    assert dotted.records[2] == "PortAnaRecord" and dotted.port_analysis is not None


def test_the_handler_arguments_qlib_takes_are_reported_and_others_refused(tmp_path):
    """Keys Qlib's Alpha158 and Alpha360 take (their own, DataHandlerLP's, DataHandler's) stay accepted, each
    reported; found in review: a misspelt one (infer_processor) ran with the default chain."""
    def change(d):
        _kwargs(d).update(freq="day", filter_pipe=None, inst_processors=[{"class": "X"}], drop_raw=True)

    for file in ("workflow_config_lstm_Alpha360.yaml", "workflow_config_lstm_Alpha158.yaml"):
        workflow = translate(_edited(tmp_path, change, file))
        kwargs = "task.dataset.kwargs.handler.kwargs"
        assert [_entry(workflow, f"{kwargs}.{k}").status for k in ("freq", "filter_pipe", "inst_processors",
                                                                   "drop_raw")] == [
            "honoured", "honoured", "not honoured", "not honoured"]
        assert not [e for e in workflow.entries if "not a key qpipe knows" in e.meaning]


def test_alstms_rnn_type_other_than_gru_is_a_change_from_qlib(tmp_path):
    """Found in review: rnn_type LSTM was a hyper-parameter 'honoured', while Qlib's ALSTM never passes it to its
    network (always a GRU) and qpipe builds an LSTM."""
    kwargs = "task.model.kwargs"
    lstm = translate(_edited(tmp_path, lambda d: d["task"]["model"]["kwargs"].update(rnn_type="LSTM"),
                             "workflow_config_alstm_Alpha158.yaml"))
    entry = _entry(lstm, f"{kwargs}.rnn_type")
    assert entry.status == "changed" and "always trains a GRU" in entry.meaning
    assert lstm.report().splitlines()[-1].count(f"{kwargs}.rnn_type") == 1
    gru = translate(SHARED / "qlib_configs" / "workflow_config_alstm_Alpha158.yaml")
    assert _entry(gru, f"{kwargs}.rnn_type").status == "honoured"
    # the MLP without batch_size in the YAML: DNNModelPytorch's default, drawn otherwise, is named all the same
    mlp = translate(_edited(tmp_path, lambda d: d["task"]["model"]["kwargs"].pop("batch_size"),
                            "workflow_config_mlp_Alpha158.yaml"))
    batch = _entry(mlp, f"{kwargs}.batch_size")
    assert (batch.status, batch.value) == ("changed", 2000) and "with replacement" in batch.meaning


def _provider(tmp_path, members: dict[str, tuple[str, str]]) -> Path:
    """A provider directory with what the translation reads: the XSHG sessions of 2007..2020 as its calendar, a
    csi300 market file of ``members`` (name -> first, last day) and the benchmark's folder."""
    provider = tmp_path / "provider"
    (provider / "calendars").mkdir(parents=True)
    (provider / "instruments").mkdir()
    (provider / "features" / "sh000300").mkdir(parents=True)
    days = [d for d in _xshg_sessions() if "2007-01-01" <= d <= "2020-12-31"]
    (provider / "calendars" / "day.txt").write_text("\n".join(days) + "\n")
    (provider / "instruments" / "csi300.txt").write_text(
        "".join(f"{name}\t{first}\t{last}\n" for name, (first, last) in members.items()))
    return provider


def test_a_batch_larger_than_the_train_windows_samples_is_refused_before_anything_runs(tmp_path):
    """Found in review: batch_size 8192 on 40 stocks was refused by the checkpoint's run (7520 training samples)
    after prices and features were written. The market's members over the train window bound the samples."""
    provider = _provider(tmp_path, {"SH600000": ("2007-01-04", "2020-12-31"), "SH600004": ("2012-01-04", "2020-12-31")})

    def change(d, batch_size):
        d["qlib_init"]["provider_uri"] = str(provider)
        d["task"]["model"]["kwargs"]["batch_size"] = batch_size

    # train 2008-01-02..2014-12-31: 1702 sessions of SH600000, and SH600004's from 2012-01-04 (726)
    with pytest.raises(ConfigError, match=r"task.model.kwargs.batch_size = 2500: the train window 2008-01-02..2014-12-31 "
                                          r"holds at most 2428 training samples \(the members of "
                                          r"instruments/csi300.txt over its 1702 sessions\), fewer than one batch "
                                          r"\(Qlib's training loop drops an incomplete batch and would train on none\)"):
        translate(_edited(tmp_path, lambda d: change(d, 2500)))
    workflow = translate(_edited(tmp_path, lambda d: change(d, 800)))
    assert _entry(workflow, "task.model.kwargs.batch_size").meaning == (
        "hyper-parameter of the checkpoint; the train window 2008-01-02..2014-12-31 holds at most 2428 samples (the "
        "members of instruments/csi300.txt over its sessions), 3 batches a pass, fewer where members lack prices or "
        "labels")
    # the MLP: Qlib's DNNModelPytorch would train (batches with replacement), qpipe's sampler would not
    with pytest.raises(ConfigError, match=r"DNNModelPytorch draws batches with replacement and would train"):
        translate(_edited(tmp_path, lambda d: change(d, 4096), "workflow_config_mlp_Alpha158.yaml"))


def test_a_yaml_syntax_error_names_the_file_and_epochs_name_where_theirs_come_from(tmp_path):
    """Found in review: a syntax error was 'in "<unicode string>", line 41'; --epochs on TabNet, whose YAML has no
    n_epochs, said "not the YAML's 100" (the class default)."""
    path = _edited(tmp_path, lambda d: None)
    path.write_text(path.read_text().replace("n_drop: 5", "n_drop 5\n      x: 1"))
    with pytest.raises(ConfigError) as refused:
        translate(path)
    assert f'in "{path}", line' in str(refused.value) and "<unicode string>" not in str(refused.value)
    tabnet = translate(SHARED / "qlib_configs" / "workflow_config_TabNet_Alpha158.yaml").with_epochs(1)
    assert _entry(tabnet, "--epochs").meaning.startswith("n_epochs 1, not the default 100 (qpipe qrun --epochs")
    lstm = translate(SHARED / "qlib_configs" / "workflow_config_lstm_Alpha360.yaml").with_epochs(1)
    assert _entry(lstm, "--epochs").meaning.startswith("n_epochs 1, not the YAML's 200 (")


def test_a_handler_span_beyond_the_data_is_reported_as_the_span_used(tmp_path):
    """Found in review: start_time 2010-01-01 was "prices and features from 2010-01-01" where the data begin
    2012-12-06 (and so at the end): the line now says the calendar's session the runs start or end on."""
    provider = _provider(tmp_path, {"SH600000": ("2007-01-04", "2020-12-31")})

    def change(d):
        d["qlib_init"]["provider_uri"] = str(provider)
        _kwargs(d).update(start_time="2005-01-01", end_time="2021-06-30")
        _segments(d, test=["2017-01-01", "2021-06-30"])

    workflow = translate(_edited(tmp_path, change))
    kwargs = "task.dataset.kwargs.handler.kwargs"
    assert _entry(workflow, f"{kwargs}.start_time").meaning.startswith(
        "prices and features from 2007-01-04, the calendar's first session: the data begin after start_time")
    assert _entry(workflow, f"{kwargs}.end_time").meaning.startswith(
        "prices and features to 2020-12-31, the calendar's last session: the data end before end_time")
    assert [str(d) for d in workflow.span] == ["2007-01-04", "2020-12-31"] and str(workflow.prices_from) == "2007-01-04"


def test_a_workflow_keeps_the_shells_settings_it_does_not_decide(monkeypatch):
    """Found in review: QPIPE_SUSPEND_IDLE=1, the README's way to store a provider's rows without volume as
    suspended (Alpha158's volume ratios of ~1e19 otherwise), was dropped by qpipe qrun as the workflow's to decide."""
    from types import SimpleNamespace

    from qpipe.workflow.home import left_out

    for name, value in (("QPIPE_SUSPEND_IDLE", "1"), ("QPIPE_DEVICE", "cpu"), ("QPIPE_BENCHMARK", "SH000300"),
                        ("QPIPE_MARKET", "csi300")):
        monkeypatch.setenv(name, value)
    assert left_out(SimpleNamespace(settings={"QPIPE_MARKET": "csi500"})) == {"QPIPE_BENCHMARK": "SH000300"}


LOADER = {"class": "QlibDataLoader", "module_path": "qlib.data.dataset.loader", "kwargs": {"config": {
    "feature": [["Ref($close, 1)/$close", "Mean($close, 30)/$close", "Std($close, 10)/$close",
                 "Mean($volume, 80)/($volume+1e-12)", "Corr($close, Log($volume+1), 10)"],
                ["ROC1", "MA30", "STD10", "VMA80", "CORR10"]],
    "label": [["Ref($close, -2) / Ref($close, -1) - 1"], ["LABEL0"]]}}}


def _with_loader(d) -> None:
    """Qlib's LSTM Alpha158 workflow on a DataHandlerLP of its own expressions: five columns, windows of 20."""
    handler = d["task"]["dataset"]["kwargs"]["handler"]
    handler.update({"class": "DataHandlerLP", "module_path": "qlib.data.dataset.handler"})
    kwargs = handler["kwargs"]
    kwargs.pop("label", None)
    kwargs["data_loader"] = copy.deepcopy(LOADER)  # (a test may alter its copy)
    kwargs["infer_processors"] = [{"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier":
                                                                             True}},
                                  {"class": "Fillna", "kwargs": {"fields_group": "feature"}}]
    d["task"]["model"]["kwargs"]["d_feat"] = 5


def test_a_workflows_own_loader_is_a_feature_set_of_its_expressions(tmp_path):
    """Qlib's DataHandlerLP with a QlibDataLoader of one's own expressions (refused before: Alpha158 and Alpha360
    only): the workflow's feature set, named after its YAML, written for its runs into its home."""
    from qpipe.workflow.translate import translate

    workflow = translate(_edited(tmp_path, _with_loader, "workflow_config_lstm_Alpha158.yaml"))
    assert workflow.model.feature_set == "workflow" and workflow.model.params["d_feat"] == 5
    assert workflow.model.step_len == 20
    assert list(workflow.feature_sets["workflow"]) == ["ROC1", "MA30", "STD10", "VMA80", "CORR10"]
    entries = {e.key: e for e in workflow.entries}
    loader = "task.dataset.kwargs.handler.kwargs.data_loader"
    assert entries[f"{loader}.class"].status == "honoured"
    assert "features/workflow: its 5 expressions" in entries[f"{loader}.class"].meaning
    assert "79 sessions before each day" in entries[f"{loader}.class"].meaning  # Mean($volume, 80)
    assert entries[f"{loader}.kwargs.config.label"].status == "honoured"
    assert entries["task.dataset.kwargs.handler.module_path"].status == "honoured"
    assert not [e for e in workflow.entries if e.key.startswith(loader) and e.status != "honoured"]

    def wrong(d):
        _with_loader(d)
        d["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["data_loader"]["kwargs"]["config"]["feature"][0][0] = \
            "EMA($close, 5)"

    with pytest.raises(ConfigError, match=r"workflow.yaml: task.dataset.kwargs.handler.kwargs.data_loader.kwargs."
                                          r"config: column ROC1: 'EMA\(\$close, 5\)': EMA is not an operator"):
        translate(_edited(tmp_path, wrong, "workflow_config_lstm_Alpha158.yaml"))


@pytest.mark.slow
def test_a_workflow_with_its_own_loader_runs_end_to_end(tmp_path, monkeypatch):
    """The loader's workflow through the console script on a small CN provider: its expressions computed into the
    workflow's own warehouse, the LSTM trained on their 20-session windows, the test segment scored and reported."""
    from qpipe.calendar import exchange_calendar
    from qpipe.data.qlib_provider import write_qlib_provider
    from qpipe.data.synthetic import SyntheticSpec, generate_market

    provider = tmp_path / "cn_data"
    market = generate_market(SyntheticSpec(n_instruments=30, index_size=20, origin="2018-06-01"), start="2019-01-02",
                             end="2019-12-31", calendar=exchange_calendar("XSHG"))
    write_qlib_provider(market.prices, provider, market.universe)

    def shorten(d):
        _with_loader(d)
        d["qlib_init"]["provider_uri"] = str(provider)
        d["market"] = _kwargs(d)["instruments"] = "syn20"
        del d["benchmark"]
        _kwargs(d).update(start_time="2019-06-03", end_time="2019-12-27", fit_start_time="2019-06-03",
                          fit_end_time="2019-09-30")
        d["task"]["dataset"]["kwargs"]["segments"] = {"train": ["2019-06-03", "2019-09-30"],
                                                      "valid": ["2019-10-08", "2019-11-15"],
                                                      "test": ["2019-11-18", "2019-12-27"]}
        d["task"]["model"]["kwargs"].update(hidden_size=8, batch_size=256)
        d["task"]["record"] = d["task"]["record"][:2]  # SignalRecord, SigAnaRecord

    path = _edited(tmp_path, shorten, "workflow_config_lstm_Alpha158.yaml")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("QPIPE_HOME", str(tmp_path / "qpipe"))
    done = subprocess.run([QPIPE, "qrun", path, "--epochs", "1"], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "workflow.yaml -> qpipe: lstm on workflow" in done.stdout and "SigAnaRecord (" in done.stdout
    qpipe = tmp_path / "qpipe" / "workflows" / "workflow"
    assert yaml.safe_load((qpipe / "feature_sets.yaml").read_text())["workflow"]["VMA80"] == \
        "Mean($volume, 80)/($volume+1e-12)"
    with duckdb.connect(str(qpipe / "warehouse.duckdb"), read_only=True) as con:
        columns = [c for c, *_ in con.execute("SELECT * FROM features.workflow LIMIT 0").description]
        first = con.execute("SELECT min(date) FROM features.workflow").fetchone()[0]
        scored = con.execute("SELECT count(DISTINCT date) FROM predictions.scores").fetchone()[0]
    assert columns == ["date", "instrument", "ROC1", "MA30", "STD10", "VMA80", "CORR10"]
    assert str(first) == "2019-06-03" and scored > 20
