"""Settings come from QPIPE_* variables; a bad value fails with the variable's name and value."""

from datetime import date, timedelta

import pytest

from qpipe.settings import Settings, SettingsError


def test_defaults_work_out_of_the_box(tmp_path):
    settings = Settings.from_env({"QPIPE_HOME": str(tmp_path)})
    assert settings.source == "synthetic" and settings.calendar == "auto" and settings.market == "syn200"
    assert settings.first_partition == "2020-01-02" and settings.warehouse == tmp_path / "warehouse.duckdb"
    cn = Settings.from_env({"QPIPE_SOURCE": "qlib", "QPIPE_QLIB_MARKET": "csi300", "QPIPE_BENCHMARK": "SH000300"})
    assert cn.market == "csi300" and cn.qlib_ingest == "market" and cn.benchmark == "SH000300"
    assert Settings.from_env({"QPIPE_SOURCE": "tabular"}).first_partition == "2010-01-04"
    assert Settings.from_env({"QPIPE_SYNTHETIC_INSTRUMENTS": "60"}).market == "syn40"


@pytest.mark.parametrize("variable, value, message", [
    ("QPIPE_SOURCE", "csv", "QPIPE_SOURCE = 'csv': Input should be 'synthetic', 'tabular' or 'qlib'"),
    ("QPIPE_SYNTHETIC_INSTRUMENTS", "many", "QPIPE_SYNTHETIC_INSTRUMENTS = 'many': Input should be a valid integer"),
    ("QPIPE_SYNTHETIC_INSTRUMENTS", "2", "QPIPE_SYNTHETIC_INSTRUMENTS = '2': Input should be greater than or equal to 3"),
    ("QPIPE_SOURCE_COLUMNS", "{Name: instrument}", "QPIPE_SOURCE_COLUMNS = '{Name: instrument}' is not a JSON object"),
    ("QPIPE_RETRAIN_EVERY", "biweekly", "QPIPE_RETRAIN_EVERY = 'biweekly': expected one of daily, weekly, monthly"),
    ("QPIPE_MODELS", "lstm,xgboost", "QPIPE_MODELS = 'lstm,xgboost': unknown model 'xgboost'"),
    ("QPIPE_MODELS", "xgboost_alpha158", "QPIPE_MODELS = 'xgboost_alpha158': unknown model 'xgboost_alpha158'; valid "
                                         "models: mlp, lstm,"),
    ("QPIPE_MODELS", "lstm_", "QPIPE_MODELS = 'lstm_': unknown model 'lstm_'"),
    ("QPIPE_MODELS", "lstm,lstm_alpha360", "QPIPE_MODELS = 'lstm,lstm_alpha360': lstm_alpha360 is what lstm trains on "
                                           "its own (its feature set alpha360): name lstm"),
    ("QPIPE_MODELS", "lstm_momentum", "QPIPE_MODELS: lstm_momentum is lstm on the feature set 'momentum', which is "
                                      "not alpha158, and QPIPE_FEATURE_SETS names no file of your own sets"),
    ("QPIPE_MODELS", "all,all_alpha360", "QPIPE_MODELS = 'all,all_alpha360': all_alpha360 is what the architectures "
                                         "train on their own: name all"),
    ("QPIPE_DEVICE", "tpu", "QPIPE_DEVICE = 'tpu': expected auto, cpu, cuda, cuda:<index> or mps, not 'tpu'"),
    ("QPIPE_PARTITIONS_START", "notadate", "QPIPE_PARTITIONS_START = 'notadate': expected a date, YYYY-MM-DD"),
    ("QPIPE_QLIB_INGEST", "some", "QPIPE_QLIB_INGEST = 'some': Input should be 'market' or 'all'"),
    ("QPIPE_EXECUTOR", "k8s", "QPIPE_EXECUTOR = 'k8s': Input should be 'multiprocess' or 'celery'"),
    ("QPIPE_LAKE", "postgres:dbname=qpipe", "QPIPE_LAKE = 'postgres:dbname=qpipe' needs QPIPE_LAKE_DATA"),
    ("QPIPE_FEATURE_DEVICE", "mps", "QPIPE_FEATURE_DEVICE = 'mps': expected auto, cpu, cuda or cuda:<index>"),
    ("QPIPE_BLOCK_CELLS", "100", "QPIPE_BLOCK_CELLS = '100': Input should be greater than or equal to 1000"),
    ("QPIPE_TRAINING", "fast", "QPIPE_TRAINING = 'fast': Input should be 'qlib' or 'quick'"),
    ("QPIPE_SOURCE_DATE_FORMAT", "%m/%Y", "QPIPE_SOURCE_DATE_FORMAT = '%m/%Y': not a strptime format of a whole date"),
    # found by a user: a misspelt name left its setting at the default in silence (the warehouse in another folder)
    ("QPIPE_HOEM", "/tmp/x", "QPIPE_HOEM is not a qpipe setting; did you mean QPIPE_HOME? (the README's table lists them)"),
    ("QPIPE_MODLES", "mlp", "QPIPE_MODLES is not a qpipe setting; did you mean QPIPE_MODELS?"),
    # found in review: a folder gave DuckDB's 'Could not read from file ...: Is a directory', naming no setting
    ("QPIPE_WAREHOUSE", "/tmp", "QPIPE_WAREHOUSE = '/tmp': /tmp is a folder: QPIPE_WAREHOUSE names the "
                                "DuckDB file itself (e.g. /tmp/warehouse.duckdb)"),
])
def test_a_bad_value_is_refused_by_name(variable, value, message):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("command", [["qpipe.main"], ["qpipe.cadence", "2024-01-01", "2024-02-01"]])
def test_the_commands_refuse_a_bad_value_in_one_line(tmp_path, command):
    """Found by users: ``QPIPE_RETRAIN_EVERY=biweekly python -m qpipe.main`` printed an 18-line traceback, and
    ``python -m qpipe.cadence`` another."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "QPIPE_RETRAIN_EVERY": "biweekly", "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode in (1, 2) and list(tmp_path.iterdir()) == [], done.stderr
    assert done.stderr == ("qpipe: QPIPE_RETRAIN_EVERY = 'biweekly': expected one of daily, weekly, monthly or a "
                           "positive number of trading days\n")


FUTURE = "<future>"  # a Wednesday over a year ahead, put in when the test runs (the test ids stay the same every day)


def _in_the_future(text: str) -> str:
    future = next(d for d in (date.today() + timedelta(days=400 + k) for k in range(7)) if d.weekday() == 2)
    return text.replace(FUTURE, future.isoformat())


@pytest.mark.parametrize("arguments, environment, message", [
    (["--end", "yesterday"], {}, "main.py: error: --end 'yesterday': expected a date, YYYY-MM-DD"),
    (["--test-days", "0"], {}, "main.py: error: --test-days 0: expected a positive number of sessions"),
    (["--end", FUTURE], {}, f"qpipe: --end {FUTURE} is in the future (America/New_York)"),
    (["--end", "2010-01-04"], {}, "qpipe: --end 2010-01-04 is before the source's first date, 2020-01-02"),
    (["--test-days", "5000"], {}, "qpipe: the main job needs 5"),
    ([], {"QPIPE_PARTITIONS_START": FUTURE}, f"qpipe: QPIPE_PARTITIONS_START = {FUTURE}: no session from it"),
    ([], {"QPIPE_MARKET": "sp999"}, "qpipe: QPIPE_MARKET = 'sp999': not a market of the synthetic source, which has "
                                    "all, syn200"),
    (["--models", "gru_alpha360"], {}, "main.py: error: --models = 'gru_alpha360': gru_alpha360 is what gru trains on "
                                       "its own (its feature set alpha360): name gru"),
    (["--models", "gru_momentum"], {}, "main.py: error: --models: gru_momentum is gru on the feature set 'momentum', "
                                       "which is not alpha158, and QPIPE_FEATURE_SETS names no file of your own sets"),
    (["--models", "mlp,hist_alpha158"], {}, "main.py: error: --models: hist_alpha158: model 'hist' has no preset for "
                                            "feature set 'alpha158'; valid: alpha360"),
    ([], {"QPIPE_THREADS": "0"}, "qpipe: QPIPE_THREADS = '0': expected auto or a positive number of threads per step"),
    ([], {"QPIPE_HOME": "a-file"}, "qpipe: QPIPE_HOME = 'a-file': "),
    ([], {"QPIPE_SOURCE": "tabular", "QPIPE_SOURCE_PATH": "future.csv"}, "qpipe: dates in the future: source future.csv: "
                                                                        f"{FUTURE}: a typo or a vendor's placeholder"),
])
def test_the_main_job_refuses_what_it_cannot_run_in_one_line_before_any_run(tmp_path, arguments, environment,
                                                                             message):
    """Found by a user: these printed 10 to 33 lines of traceback (an IndexError for most), or wrote prices before
    failing (an --end after the source's last date, a source too short for the runs)."""
    import os
    import subprocess
    import sys

    arguments, message = [_in_the_future(a) for a in arguments], _in_the_future(message)
    environment = {k: _in_the_future(v) for k, v in environment.items()}
    (tmp_path / "a-file").write_text("")
    (tmp_path / "future.csv").write_text("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,10,100\n"
                                         + _in_the_future(f"{FUTURE},AAA,10,11,9,10,100\n"))
    before = sorted(tmp_path.iterdir())
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), **environment}
    done = subprocess.run([sys.executable, "-m", "qpipe.main", *arguments], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode in (1, 2) and sorted(tmp_path.iterdir()) == before, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(message) and (len(lines) == 1 or lines[0].startswith("usage:")), done.stderr


def test_the_main_job_ends_on_the_last_session_over(monkeypatch):
    """Found in review: run during a session, the main job ingested that session's bars as the day's."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from qpipe.calendar import MarketCalendar, market_calendar
    from qpipe.compute import compute_plan
    from qpipe.main import planned

    def at(day: int, hour: int):
        when = dt.datetime(2026, 3, day, hour, tzinfo=ZoneInfo("America/New_York"))
        monkeypatch.setattr(MarketCalendar, "now", lambda self: when)

    plan, calendar = compute_plan(1), market_calendar()
    at(10, 11)  # a Tuesday, trading
    assert planned(calendar, None, ("mlp",), 20, plan, 1)[1] == dt.date(2026, 3, 9)
    with pytest.raises(ValueError, match=r"^--end 2026-03-10 is a session not over yet: XNYS closes at 16:00 "
                                         r"\(America/New_York\), in 5 h 00 min; the latest session over is "
                                         r"2026-03-09$"):
        planned(calendar, dt.date(2026, 3, 10), ("mlp",), 20, plan, 1)
    at(10, 17)
    assert planned(calendar, None, ("mlp",), 20, plan, 1)[1] == dt.date(2026, 3, 10)
    at(14, 9)  # a Saturday
    assert planned(calendar, None, ("mlp",), 20, plan, 1)[1] == dt.date(2026, 3, 13)


def test_the_main_job_needs_only_its_own_windows_and_prepares_the_schedules_as_far_as_the_history_goes():
    """Found in review: on 481 sessions the main job (240 + 60 sessions of training, 20 scored) was refused with
    "needs 663 sessions": it asked for Qlib's 480 + 120 too, the window of the schedule's next checkpoint, even under
    QPIPE_TRAINING=quick."""
    import datetime as dt

    from qpipe.calendar import trading_days
    from qpipe.compute import compute_plan
    from qpipe.features.store import LOOKBACK
    from qpipe.main import stages

    days = trading_days("2020-01-02", "2021-12-01")[-481:]
    first, last = (dt.date.fromisoformat(str(d)) for d in (days[0], days[-1]))

    def features_from(profile: str) -> str:
        runs = stages(last, ("mlp",), 20, compute_plan(1), first_day=first, profile=profile)
        return runs[1].tags["dagster/asset_partition_range_start"]

    assert features_from("quick") == str(days[480 - 20 - 2 - 300 + 1])  # the main job's window: the schedule's
    assert features_from("qlib") == str(days[LOOKBACK])  # as far back as the prices go
    with pytest.raises(ValueError, match="the main job needs 513 sessions"):  # its own windows do not fit
        stages(last, ("mlp",), 150, compute_plan(1), first_day=first, profile="quick")


def test_qpipe_models_names_architectures_and_their_variants_on_other_feature_sets(tmp_path):
    """Qlib's table has most networks on Alpha158 and on Alpha360: ``all`` is every architecture (on Alpha360), and
    ``<architecture>_<feature set>`` one more model, each a row of the leaderboard; the main job trains it with its
    architecture's quick profile, on the features it materializes."""
    import datetime as dt

    from qpipe.calendar import trading_days
    from qpipe.compute import compute_plan
    from qpipe.main import stages
    from qpipe.models.registry import ARCHITECTURES

    sets = tmp_path / "sets.yaml"
    sets.write_text("momentum:\n  ROC1: Ref($close, 1)/$close\n")
    settings = Settings.from_env({"QPIPE_MODELS": "all, LSTM_alpha158,lstm_momentum, mlp", "QPIPE_FEATURE_SETS": str(sets)})
    assert settings.models == (*ARCHITECTURES, "lstm_alpha158", "lstm_momentum")
    assert settings.variants == ("lstm_alpha158", "lstm_momentum")
    # Qlib's whole table: every architecture on Alpha360, and those Qlib runs on Alpha158 on Alpha158 too
    from qpipe.models.registry import BUILTIN, ON_ALPHA158, get_spec

    assert ON_ALPHA158 == tuple(arch for arch in BUILTIN if "alpha158" in get_spec(arch).presets)
    table = Settings.from_env({"QPIPE_MODELS": "all,all_alpha158"}).models
    assert table == (*ARCHITECTURES, *(f"{arch}_alpha158" for arch in ON_ALPHA158)) and len(table) == 18
    assert Settings.from_env({"QPIPE_MODELS": "all_momentum", "QPIPE_FEATURE_SETS": str(sets)}).models[-1] == \
        "tabnet_momentum"
    days = trading_days("2020-01-02", "2021-12-01")
    runs = stages(dt.date.fromisoformat(str(days[-1])), ("mlp_alpha158", "lstm_momentum"), 20, compute_plan(1),
                  first_day=dt.date.fromisoformat(str(days[0])), profile="quick")
    assert runs[1].keys == ["features/alpha158", "features/alpha360", "features/momentum", "features/label"]
    assert runs[2].keys == ["models/mlp_alpha158_checkpoint", "models/lstm_momentum_checkpoint"]
    trained = runs[2].run_config["ops"]
    assert trained["models__mlp_alpha158_checkpoint"]["config"]["params"] == {"n_epochs": 30, "batch_size": 512}
    assert trained["models__lstm_momentum_checkpoint"]["config"]["params"] == {"n_epochs": 4, "hidden_size": 32}
    assert "reports/lstm_momentum_backtest" in runs[3].keys
