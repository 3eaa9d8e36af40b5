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
    # Qlib's QlibDataLoader config whole, its label Qlib's (found in review: refused as a column named feature)
    path.write_text(yaml.safe_dump({"q": {"feature": [["$close/$open"], ["CO"]],
                                          "label": [["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]]}}))
    assert list(read_feature_sets(path)["q"]) == ["CO"]


@pytest.mark.parametrize("document, message", [
    ({"momentum": {"EMA5": "EMA($close, 5)"}}, "set momentum: column EMA5: 'EMA\\(\\$close, 5\\)': EMA is not an "
                                               "operator qpipe evaluates"),
    ({"future": {"LABEL": "Ref($close, -2)/Ref($close, -1) - 1"}}, "Ref\\(-2\\) reads a later session"),
    ({"alpha158": {"X": "$close"}}, "set alpha158: the name is qpipe's own"),
    ({"Mom": {"X": "$close"}}, "set Mom: a set's name is lower-case letters"),
    ({"m": {"roc": "$close", "ROC": "$open"}}, "columns roc and ROC are one name to DuckDB"),
    ({"m": {"my col": "$close"}}, "column 'my col': a column's name is letters, digits and _"),
    # found in review: a set x_incoming was the staging table of x's large writes, dropped after them; date and
    # instrument failed at run time in DuckDB's words
    ({"alpha158_incoming": {"X": "$close"}}, "the name is qpipe's own .*a name ending in _incoming"),
    ({"expressions": {"X": "$close"}}, "the name is qpipe's own"),
    ({"m": {"date": "$close"}}, "column date: the name is every feature table's key column"),
    ({"m": {"feature": [["$close"], ["A"]], "label": [["Ref($close, -1)"], ["L"]]}},
     "label = .*qpipe trains on one label, features/label"),
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
from qpipe.features import store
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
# the set's definition changed after its table was written: refused, nothing written (found in review: the days
# written after it took the new expression, the others kept the old; an added column was dropped in silence)
from qpipe.features.expressions import parse
changed = {**store.FEATURE_SETS["momentum"].expressions, "ROC1": "Ref($close, 5)/$close"}
added = {**store.FEATURE_SETS["momentum"].expressions, "NEW": "$open/$close"}
refusals = []
with duckdb.connect(resources["warehouse"].database) as con:
    before = con.execute("SELECT * FROM features.momentum ORDER BY ALL").df()
    for definition in (changed, added):
        try:
            store.write_features(con, [store.expression_set("momentum", {c: parse(t) for c, t in definition.items()})],
                                 "2024-02-29", "2024-02-29")
        except ValueError as error:
            refusals.append(str(error))
    unchanged = bool(con.execute("SELECT * FROM features.momentum ORDER BY ALL").df().equals(before))
print(json.dumps({
    "description": spec.description, "expressions": spec.metadata["expressions"].value,
    "columns": list(ranged.columns), "same": bool(ranged.equals(single)), "rows": len(ranged),
    "scored": scored, "refusals": refusals, "unchanged": unchanged,
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
    changed, added = seen["refusals"]
    assert ("features.momentum was computed from another definition of the set momentum (ROC1: Ref($close, 1)/$close "
            "then, Ref($close, 5)/$close now): its days would mix the two. Give the new definition a name of its own"
            in changed), changed
    assert "its columns are ROC1, VMA120R, UPDAYS; QPIPE_FEATURE_SETS's are ROC1, VMA120R, UPDAYS, NEW" in added
    assert seen["unchanged"]
    # without the setting, the checkpoint is not called corrupt (found in review: "train it again", which would fail)
    without = {k: v for k, v in env.items() if k != "QPIPE_FEATURE_SETS"}
    load = subprocess.run([sys.executable, "-c", "import sys; from qpipe.training.checkpoint import load_checkpoint; "
                           "load_checkpoint(sys.argv[1])", str(tmp_path / "run" / "range" / "checkpoints" / "mlp" /
                                                               "2024-01-31")],
                          env=without, capture_output=True, text=True, timeout=300)
    assert ("trained on the feature set 'momentum', which this process does not define (it has alpha158, alpha360): "
            "set QPIPE_FEATURE_SETS to the file that defines it") in load.stderr, load.stderr[-2000:]


def test_a_column_that_is_never_a_number_is_named(tmp_path):
    """Found in review: $vwap/$close on a source without vwap stored a column of NaN, in silence."""
    from types import SimpleNamespace

    import duckdb
    import pandas as pd

    from qpipe.assets.features import warn_of_empty_columns
    from qpipe.features.expressions import parse
    from qpipe.features.store import expression_set

    fs = expression_set("mine", {"CO": parse("$close/$open"), "VWAPR": parse("$vwap/$close")})
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("CREATE SCHEMA features; CREATE TABLE features.mine (date DATE, instrument VARCHAR, CO FLOAT, "
                    "VWAPR FLOAT)")
        con.execute("INSERT INTO features.mine VALUES ('2024-01-02', 'A', 1.01, 'NaN'), ('2024-01-03', 'A', 0.99, "
                    "'inf'), ('2024-01-04', 'A', 'NaN', 'NaN')")
        said: list[str] = []
        warn_of_empty_columns(SimpleNamespace(log=SimpleNamespace(warning=said.append)), con, fs,
                              pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-04"))
    assert said == ["mine: VWAPR ($vwap/$close) hold no number on any row of 2024-01-02..2024-01-04: NaN or infinite "
                    "everywhere (a field the source lacks, as $vwap of one without it, or an expression that is never "
                    "a number)"]
