"""Each asset's Dagster ``code_version``: a digest of the qpipe source files that compute its values.

Dagster records it with every materialization (the lineage says which code made a table, a checkpoint or a score)
and marks an asset whose code changed since (the UI's "code version changed"), so an upgrade that changes Alpha158's
operators flags the feature tables, not the prices (what reads the tables is marked once they are computed again and
their rows changed: their data versions). A user's feature set is versioned by its expressions too, a plugin's network
by its distribution's version.
"""

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).parent
INGEST = ("data", "calendar.py")
OPERATORS = ("features/ops.py", "features/ops_torch.py", "features/panel.py", "features/store.py")
FEATURE_FILES = {"alpha158": ("features/alpha158.py",), "alpha360": ("features/alpha360.py",),
                 "label": ("features/label.py",)}
# (the whole training loop's folder, and the IC that picks the kept epoch under metric: ic; coarse: a change of its
# progress lines marks every checkpoint)
NETWORK = ("training", "features/handler.py", "features/processors.py", "models/spec.py", "models/config.py",
           "models/recurrent.py", "evaluation/ic.py", "training_profiles.py")
IC = ("evaluation/ic.py", "evaluation/report.py")
BACKTEST = ("evaluation/backtest.py", "evaluation/backtest_store.py", "evaluation/risk.py")
LEADERBOARD = ("evaluation/report.py", "evaluation/backtest_store.py", "evaluation/tearsheet.py")


def digest(parts: tuple[str, ...], extra: str = "", root: Path = ROOT) -> str:
    """12 hex digits of sha256 over the files ``parts`` name under ``root`` (a folder: its ``.py`` files), and
    ``extra``."""
    sha = hashlib.sha256(extra.encode())
    for part in parts:
        path = root / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            sha.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return sha.hexdigest()[:12]


# (each wrapper once per process: the definitions ask for one version per model's four assets)
@functools.cache
def ingest_version() -> str:
    return digest(INGEST)


def feature_version(name: str, expressions: dict[str, str] | None = None) -> str:
    """Alpha158's, Alpha360's or the label's files; a user's set: the expression language and its expressions."""
    own = FEATURE_FILES.get(name, ("features/expressions.py", "features/custom.py"))
    text = "\n".join(f"{column}: {expression}" for column, expression in (expressions or {}).items())
    return digest(OPERATORS + own, text)


@functools.cache
def network_version(arch: str) -> str:
    """A checkpoint's and its scores': the training loop, the processors and the network's file (a plugin's: its
    distribution and version)."""
    from qpipe.models.registry import BUILTIN, PLUGINS

    if arch in BUILTIN:
        return digest((*NETWORK, f"models/{arch}.py"))
    point = PLUGINS[arch]
    return digest(NETWORK, f"{point.value} {point.dist.name if point.dist else ''} "
                           f"{point.dist.version if point.dist else ''}")


@functools.cache
def ic_version() -> str:
    return digest(IC)


@functools.cache
def backtest_version() -> str:
    return digest(BACKTEST)


@functools.cache
def leaderboard_version() -> str:
    return digest(LEADERBOARD)
