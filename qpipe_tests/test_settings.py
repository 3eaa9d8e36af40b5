"""Settings come from QPIPE_* variables; a bad value fails with the variable's name and value."""

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
    ("QPIPE_DEVICE", "tpu", "QPIPE_DEVICE = 'tpu': expected auto, cpu, cuda, cuda:<index> or mps, not 'tpu'"),
    ("QPIPE_PARTITIONS_START", "notadate", "QPIPE_PARTITIONS_START = 'notadate': expected a date, YYYY-MM-DD"),
    ("QPIPE_QLIB_INGEST", "some", "QPIPE_QLIB_INGEST = 'some': Input should be 'market' or 'all'"),
    ("QPIPE_EXECUTOR", "k8s", "QPIPE_EXECUTOR = 'k8s': Input should be 'multiprocess' or 'celery'"),
    ("QPIPE_LAKE", "postgres:dbname=qpipe", "QPIPE_LAKE = 'postgres:dbname=qpipe' needs QPIPE_LAKE_DATA"),
    ("QPIPE_FEATURE_DEVICE", "mps", "QPIPE_FEATURE_DEVICE = 'mps': expected auto, cpu, cuda or cuda:<index>"),
    ("QPIPE_BLOCK_CELLS", "100", "QPIPE_BLOCK_CELLS = '100': Input should be greater than or equal to 1000"),
    ("QPIPE_TRAINING", "fast", "QPIPE_TRAINING = 'fast': Input should be 'qlib' or 'quick'"),
    ("QPIPE_SOURCE_DATE_FORMAT", "%m/%Y", "QPIPE_SOURCE_DATE_FORMAT = '%m/%Y': not a strptime format of a whole date"),
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
