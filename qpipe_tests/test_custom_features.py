"""A user's own feature set of Qlib expressions (QPIPE_FEATURE_SETS): refused by name where it is wrong; otherwise an
asset of its own whose one-day partition equals the whole history's value (a window longer than Alpha158's too), on
which a model trains with its Alpha158 preset and the set's width."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from qpipe.features.custom import FeatureSetError, read_feature_sets
from qpipe.settings import Settings, SettingsError
from qpipe_tests.conftest import REPO

SETS = {
    "momentum": {"ROC1": "Ref($close, 1)/$close", "VMA120R": "Mean($volume, 120)/($volume+1e-12)",
                 "UPDAYS": "Mean($close>Ref($close, 1), 10)"},
    "copied": {"feature": [["($close-$open)/$open", "Std($close, 10)/$close"], ["KMID", "STD10"]]},
}


def test_the_sets_are_read_in_both_forms_with_their_lookback(tmp_path):
    path = tmp_path / "sets.yaml"
    path.write_text(yaml.safe_dump(SETS, sort_keys=False))
    sets = read_feature_sets(path)
    assert {name: list(columns) for name, columns in sets.items()} == {"momentum": ["ROC1", "VMA120R", "UPDAYS"],
                                                                       "copied": ["KMID", "STD10"]}
    assert sets["momentum"]["VMA120R"].lookback == 119 and sets["copied"]["STD10"].text == "Std($close, 10)/$close"
    assert read_feature_sets("") == {}


@pytest.mark.parametrize("document, message", [
    ({"momentum": {"EMA5": "EMA($close, 5)"}}, "set momentum: column EMA5: 'EMA\\(\\$close, 5\\)': EMA is not an "
                                               "operator qpipe evaluates"),
    ({"future": {"LABEL": "Ref($close, -2)/Ref($close, -1) - 1"}}, "Ref\\(-2\\) reads a later session"),
    ({"alpha158": {"X": "$close"}}, "set alpha158: the name is qpipe's own"),
    ({"Mom": {"X": "$close"}}, "set Mom: a set's name is lower-case letters"),
    ({"m": {"roc": "$close", "ROC": "$open"}}, "columns roc and ROC are one name to DuckDB"),
    ({"m": {"my col": "$close"}}, "column 'my col': a column's name is letters, digits and _"),
    ({"m": {"feature": [["$close"], ["A", "B"]]}}, "feature must be two lists of one length"),
    ({"m": []}, "expected columns \\(name: expression\\)"),
    (["m"], "expected a mapping of feature sets"),
])
def test_a_wrong_set_is_refused_naming_the_file_the_set_the_column_and_why(tmp_path, document, message):
    path = tmp_path / "sets.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(FeatureSetError, match=f"QPIPE_FEATURE_SETS = {path}: .*{message}"):
        read_feature_sets(path)


def test_a_missing_file_or_a_wrong_set_is_a_settings_error_of_one_line(tmp_path):
    with pytest.raises(SettingsError, match="QPIPE_FEATURE_SETS = .*is not a file"):
        Settings.from_env({"QPIPE_FEATURE_SETS": str(tmp_path / "nowhere.yaml")})
    wrong = tmp_path / "sets.yaml"
    wrong.write_text("m:\n  X: EMA($close, 5)\n")
    message = f"QPIPE_FEATURE_SETS = {wrong}: set m: column X: 'EMA($close, 5)': EMA is not an operator"
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({"QPIPE_FEATURE_SETS": str(wrong)})
    env = {**os.environ, "QPIPE_FEATURE_SETS": str(wrong), "DAGSTER_HOME": str(tmp_path)}
    qrun = [str(Path(sys.executable).parent / "qpipe"), "qrun", str(tmp_path / "any.yaml"), "--dry-run"]
    for command, prefix in (([sys.executable, "-m", "qpipe.main"], "qpipe: "), (qrun, "qpipe qrun: ")):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and done.stderr.strip().splitlines() == [prefix + message + done.stderr.strip()
                                                                             .split(message, 1)[1]], done.stderr


SCRIPT = """
import json, sys
import dagster as dg
import duckdb
from qpipe.definitions import defs
from qpipe_tests.test_model_assets import run, synthetic_resources
from pathlib import Path

root = Path(sys.argv[1])
graph = defs.resolve_asset_graph()
spec = graph.get(dg.AssetKey(["features", "momentum"]))
resources = synthetic_resources(root / "range", n_instruments=30, seed=5)
run("2023-01-03", "2024-02-29", ["raw/prices", "raw/universe", "raw/concepts"], resources)
run("2023-09-01", "2024-02-29", ["features/momentum", "features/label"], resources)
one_day = synthetic_resources(root / "day", n_instruments=30, seed=5)
run("2023-01-03", "2024-02-29", ["raw/prices"], one_day)
run("2024-02-29", "2024-02-29", ["features/momentum"], one_day)
query = "SELECT * FROM features.momentum WHERE date = '2024-02-29' ORDER BY instrument"
with duckdb.connect(resources["warehouse"].database, read_only=True) as con:
    ranged = con.execute(query).df()
with duckdb.connect(one_day["warehouse"].database, read_only=True) as con:
    single = con.execute(query).df()
config = {"feature_set": "momentum", "train_days": 60, "valid_days": 20, "params": {"n_epochs": 2, "batch_size": 256}}
run("2024-01-31", "2024-01-31", ["models/mlp_checkpoint"], resources, {"models__mlp_checkpoint": {"config": config}})
run("2024-02-01", "2024-02-29", ["predictions/mlp_predictions"], resources)
with duckdb.connect(resources["warehouse"].database, read_only=True) as con:
    scored = con.execute("SELECT count(DISTINCT date) FROM predictions.scores WHERE model = 'mlp'").fetchone()[0]
print(json.dumps({
    "description": spec.description, "expressions": spec.metadata["expressions"].value,
    "columns": list(ranged.columns), "same": bool(ranged.equals(single)), "rows": len(ranged),
    "scored": scored,
}))
"""


@pytest.mark.slow
def test_a_users_set_is_an_asset_a_day_of_which_equals_the_range_and_a_model_trains_on_it(tmp_path):
    sets = tmp_path / "sets.yaml"
    sets.write_text(yaml.safe_dump(SETS, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "QPIPE_HOME": str(tmp_path / "qpipe"), "QPIPE_MARKET": "syn20",
           "QPIPE_FEATURE_SETS": str(sets)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "run")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "3 float32 columns of your own Qlib expressions" in seen["description"]
    assert "| VMA120R | `Mean($volume, 120)/($volume+1e-12)` |" in seen["expressions"]
    assert seen["columns"] == ["date", "instrument", "ROC1", "VMA120R", "UPDAYS"] and seen["rows"] >= 20
    # the one-day partition read its 119 sessions before, as the range did (found in review: 61 were read, a
    # Mean($volume, 120) came out otherwise than the range's)
    assert seen["same"]
    assert seen["scored"] == 20
    sidecar = json.loads((tmp_path / "run" / "range" / "checkpoints" / "mlp" / "2024-01-31.json").read_text())
    assert sidecar["feature_set"] == "momentum" and sidecar["config"]["params"]["input_dim"] == 3
