"""A user's own feature sets of Qlib expressions, beside Alpha158 and Alpha360: ``QPIPE_FEATURE_SETS`` names a YAML
file holding them, one set per key (its asset ``features/<name>``, its DuckDB table ``features.<name>``)::

    momentum:                          # column: expression
      ROC1: Ref($close, 1)/$close
      VMA120R: Mean($volume, 120)/($volume+1e-12)
    copied:                            # Qlib's QlibDataLoader form: [[expressions], [names]]
      feature:
        - ["($close-$open)/$open", "Std($close, 10)/$close"]
        - ["KMID", "STD10"]

Each set reads as many sessions before a day as its longest expression does (Qlib's extended window), so a one-day
partition equals the whole history's value. A model trains on a set with its Alpha158 preset: TSDatasetH windows for
the sequence models, rows for the others, its width (``d_feat``, ``input_dim``) the set's number of columns, and the
benchmark's processors (RobustZScoreNorm, Fillna; DropnaLabel, CSRankNorm).
"""

import functools
import re
from pathlib import Path
from typing import Any

import yaml

from qpipe.data.warehouse import STAGING
from qpipe.features.expressions import Expression, ExpressionError, parse
from qpipe.settings import SettingsError

SET_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")  # an asset key's and a DuckDB table's part
COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TAKEN = ("alpha158", "alpha360", "label", "expressions")  # qpipe's own tables in the features schema
KEY_COLUMNS = ("date", "instrument")  # every feature table's own
QLIB_LABEL = "Ref($close,-2)/Ref($close,-1)-1"  # the label qpipe trains on (features/label), spaces left out


class FeatureSetError(SettingsError):
    pass


def read_feature_sets(path: str | Path) -> dict[str, dict[str, Expression]]:
    """The sets of the YAML file at ``path`` (none for ""): set -> column -> expression; a FeatureSetError names the
    file, the set, the column and what is wrong."""
    if not str(path):
        return {}
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise FeatureSetError(f"QPIPE_FEATURE_SETS = {path}: cannot read the feature sets: {error}") from None
    return _parsed(str(path), text)


@functools.lru_cache(maxsize=8)
def _parsed(path: str, text: str) -> dict[str, dict[str, Expression]]:
    """(Settings are read on every call of get_settings: the file is parsed once per content.)"""
    where = f"QPIPE_FEATURE_SETS = {path}"
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise FeatureSetError(f"{where}: cannot read the feature sets: {error}") from None
    if not isinstance(document, dict) or not document:
        raise FeatureSetError(f"{where}: expected a mapping of feature sets (name: {{column: expression}}), "
                              f"not {type(document).__name__}")
    return {str(name): _read_set(f"{where}: set {name}", name, body) for name, body in document.items()}


def _read_set(where: str, name: Any, body: Any) -> dict[str, Expression]:
    if not isinstance(name, str) or not SET_NAME.match(name):
        raise FeatureSetError(f"{where}: a set's name is lower-case letters, digits and _, starting with a letter")
    if name in TAKEN or name.endswith(STAGING):  # (found in review: a set x_incoming was x's staging table)
        raise FeatureSetError(f"{where}: the name is qpipe's own ({', '.join(TAKEN)}, or a name ending in "
                              f"{STAGING}, a staging table's): name it otherwise")
    qlib_form = isinstance(body, dict) and "feature" in body and set(body) <= {"feature", "label"}
    columns = _qlib_form(where, body) if qlib_form else body
    if not isinstance(columns, dict) or not columns:
        raise FeatureSetError(f"{where}: expected columns (name: expression) or Qlib's feature: [[expressions], "
                              "[names]]")
    return _expressions(where, columns)


def loader_expressions(where: str, config: Any) -> dict[str, Expression]:
    """A Qlib workflow's QlibDataLoader ``config`` (``feature: [[expressions], [names]]``, its label Qlib's), as a
    set's columns; a FeatureSetError names ``where`` and what is wrong."""
    if not (isinstance(config, dict) and "feature" in config and set(config) <= {"feature", "label"}):
        raise FeatureSetError(f"{where}: expected Qlib's {{feature: [[expressions], [names]], label: ...}}, not "
                              f"{str(config)[:80]}")
    return _expressions(where, _qlib_form(where, config))


def workflow_set_name(path: str | Path) -> str:
    """The feature set of a Qlib workflow's own loader, named after its YAML (each workflow has its own warehouse)."""
    name = re.sub(r"[^a-z0-9_]+", "_", Path(path).stem.lower()).strip("_")
    name = name if name and name[0].isalpha() else f"workflow_{name}"
    return f"{name}_set" if name in TAKEN or name.endswith(STAGING) else name


def _expressions(where: str, columns: dict) -> dict[str, Expression]:
    """The columns' names checked and their expressions parsed."""
    seen: dict[str, str] = {}
    expressions = {}
    for column, text in columns.items():
        if not isinstance(column, str) or not COLUMN_NAME.match(column):
            raise FeatureSetError(f"{where}: column {column!r}: a column's name is letters, digits and _")
        if column.lower() in KEY_COLUMNS:
            raise FeatureSetError(f"{where}: column {column}: the name is every feature table's key column")
        if column.lower() in seen:  # DuckDB's column names ignore case
            raise FeatureSetError(f"{where}: columns {seen[column.lower()]} and {column} are one name to DuckDB")
        seen[column.lower()] = column
        if not isinstance(text, str):
            raise FeatureSetError(f"{where}: column {column}: the expression must be a string, not {text!r}")
        try:
            expressions[column] = parse(text)
        except ExpressionError as error:
            raise FeatureSetError(f"{where}: column {column}: {error}") from None
    return expressions


def _qlib_form(where: str, body: dict) -> dict[str, Any]:
    """QlibDataLoader's ``feature: [[expressions], [names]]`` as columns; its ``label``, if there, must be qpipe's."""
    label = body.get("label")
    expressions = label[0] if isinstance(label, list) and len(label) == 2 and isinstance(label[0], list) else label
    if label is not None and [str(x).replace(" ", "") for x in (expressions if isinstance(expressions, list)
                                                                 else [expressions])] != [QLIB_LABEL]:
        raise FeatureSetError(f"{where}: label = {label!r}: qpipe trains on one label, features/label, Qlib's "
                              "Ref($close, -2)/Ref($close, -1) - 1: remove label or set it to that")
    pair = body["feature"]
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, list) for part in pair)
            and len(pair[0]) == len(pair[1])):
        raise FeatureSetError(f"{where}: feature must be two lists of one length, [[expressions], [names]] (qpipe "
                              "names each column: a list of expressions alone would name them by their text)")
    names = [str(name) for name in pair[1]]
    if len(set(names)) < len(names):
        raise FeatureSetError(f"{where}: a name comes twice in feature's names")
    return dict(zip(names, pair[0]))
