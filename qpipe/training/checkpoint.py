"""Checkpoints: ``<path>.safetensors`` (weights) + ``<path>.json`` (everything needed to reuse them).

Nothing is pickled and loading runs no code: the sidecar names a registered architecture and its
hyper-parameters, the weights are plain tensors. The sidecar records the weights' SHA-256, so a
truncated, corrupt or mismatched pair is refused with the file named. Both files are written to
temporary names and renamed into place only once both are complete, so a failed save leaves any
existing checkpoint as it was.
"""

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from qpipe.models.config import ModelConfig, build_model, feature_set_names
from qpipe.models.registry import get_spec
from qpipe.training.result import TrainResult

FORMAT = "qpipe-checkpoint/1"


class CheckpointError(ValueError):
    pass


class _Weights(BaseModel):
    file: str
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    bytes: int


class _Sidecar(BaseModel):
    """The keys loading relies on; the rest of the document (history, windows, ...) is kept as it is."""

    model_config = ConfigDict(extra="allow")
    format: str
    config: dict[str, Any]
    columns: list[str] = Field(min_length=1)
    processor_state: dict[str, Any]
    weights: _Weights


def _check_sidecar(sidecar: Any, path: Path) -> None:
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} sidecar")
    try:
        _Sidecar.model_validate(sidecar)
    except ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        raise CheckpointError(f"{path}: the sidecar's {key!r} is {'missing' if problem['type'] == 'missing' else 'invalid'}"
                              f" ({problem['msg']}); it cannot be used, retrain this partition") from None


@dataclass(frozen=True)
class Checkpoint:
    model: nn.Module  # weights loaded, in eval mode
    config: ModelConfig
    columns: list[str]
    sidecar: dict[str, Any]  # the whole JSON document (windows, processor_state, history, ...)

    @property
    def assumed(self) -> dict[str, Any]:
        """The network's arguments the sidecar does not record (added to the code after the training), with the
        default they take now: the network that scores may not be the one that was trained (found in review)."""
        recorded = self.sidecar["config"]["params"]
        return {name: self.config.params[name] for name in get_spec(self.config.model).net_parameters()
                if name not in recorded and name in self.config.params}

    def assumed_warning(self, arch: str, partition: str) -> str:
        """What to tell the user of ``assumed`` arguments ("" when there are none)."""
        assumed = self.assumed
        if not assumed:
            return ""
        trained = self.sidecar.get("versions", {}).get("qpipe_source") or "unrecorded"
        return (f"{arch} checkpoint {partition} records no {', '.join(assumed)} (network arguments added to the "
                f"code since it was trained: qpipe source {trained[:12]}, now {_source_revision()[:12] or 'unknown'}): "
                f"it scores with today's default ({', '.join(f'{k}={v!r}' for k, v in assumed.items())}), which "
                f"may not be the network that was trained; retrain it to score with what it records (dg launch "
                f"--assets models/{arch}_checkpoint --partition {partition})")


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a checkpoint path given with or without an extension."""
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def stored_version(path: str | Path) -> tuple[str, str]:
    """(the sha256 of the weights, of the weights with everything else the scores depend on) of the checkpoint at
    ``path``, as its sidecar records them; ("", "") when there is none or it cannot be read."""
    try:
        sidecar = json.loads(checkpoint_paths(path)[1].read_text())
        weights = str(sidecar["weights"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", ""
    return weights, _sha256_of([weights, sidecar.get("definition_sha256")])


def save_checkpoint(
    path: str | Path,
    result: TrainResult,
    config: ModelConfig,
    *,
    columns: list[str],
    windows: Mapping[str, Any],
    processor_state: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    concepts: list[str] | None = None,
) -> tuple[Path, Path]:
    """Write the pair atomically; ``windows`` (train/valid date ranges), ``processor_state`` and
    ``provenance`` (how the run was configured) must be JSON."""
    weights_path, sidecar_path = checkpoint_paths(path)
    weights = safetensors.torch.save(result.state_dict)
    sidecar = {
        "format": FORMAT,
        "architecture": config.model,
        "config": config.to_json(),
        "feature_set": config.feature_set,
        "columns": list(columns),
        "concepts": None if concepts is None else list(concepts),  # the concept matrix's columns (HIST)
        "windows": dict(windows),
        "processor_state": dict(processor_state),
        "provenance": dict(provenance or {}),
        "seed": result.seed,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "placebo_valid_loss": result.placebo_valid_loss,
        "history": result.history,
        "pretrain_history": result.pretrain_history,
        "seconds_per_epoch": result.seconds_per_epoch,
        "n_params": result.n_params,
        "device": result.device,
        "processes": result.processes,  # data-parallel ranks (Qlib's data_parall); 1 = one process
        "versions": _versions(),
        "weights": {"file": weights_path.name, "sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)},
    }
    try:
        sidecar = _json_safe(sidecar)
        sidecar["definition_sha256"] = {key: _sha256_of(sidecar[key]) for key in DEFINITION}
        text = json.dumps(sidecar, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{sidecar_path}: checkpoint metadata is not JSON-serializable: {error}") from error
    staged: list[Path] = []
    try:
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        for final, data in ((weights_path, weights), (sidecar_path, text.encode())):
            staged.append(_stage(final, data))
    except BaseException as error:
        for temporary in staged:
            temporary.unlink()
        if isinstance(error, OSError):  # a full disk, a folder not writable: say where, and what is left
            kept = "the checkpoint stored there before is kept" if weights_path.exists() else "nothing is stored there"
            raise CheckpointError(f"could not write the checkpoint {weights_path.name} ({len(weights):,} bytes) and "
                                  f"{sidecar_path.name} into {weights_path.parent}: {error.strerror or error}; {kept}, "
                                  "no partial file is left. Free space there (or point QPIPE_HOME elsewhere) and "
                                  "train again") from error
        raise
    for temporary, final in zip(staged, (weights_path, sidecar_path)):
        os.replace(temporary, final)
    return weights_path, sidecar_path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    weights_path, sidecar_path = checkpoint_paths(path)
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except FileNotFoundError:
        if not weights_path.exists():  # (found in review: a mistyped path was named a missing sidecar)
            raise CheckpointError(f"{Path(path)}: no qpipe checkpoint there (neither {weights_path.name} nor "
                                  f"{sidecar_path.name})") from None
        raise CheckpointError(f"{sidecar_path}: missing checkpoint sidecar (the JSON next to {weights_path.name})") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{sidecar_path}: unreadable checkpoint sidecar: {error}") from error
    _check_sidecar(sidecar, sidecar_path)
    recorded = sidecar.get("definition_sha256") or {}
    changed = [repr(key) for key, sha in recorded.items() if _sha256_of(sidecar.get(key)) != sha]
    if changed:
        raise CheckpointError(f"{sidecar_path}: its {' and '.join(changed)} differ from what was saved with these "
                              "weights (edited by hand?): its scores would not be the model's. Restore the sidecar, or "
                              "retrain this partition")
    try:
        weights = weights_path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{weights_path}: cannot read checkpoint weights: {error}") from error
    if hashlib.sha256(weights).hexdigest() != sidecar["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights_path}: weights do not match {sidecar_path.name} (sha256 differs: truncated, corrupt, or from another save)"
        )
    try:
        state_dict = safetensors.torch.load(weights)
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{weights_path}: not a valid safetensors file: {error}") from error
    broken = next((name for name, tensor in state_dict.items()
                   if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
    if broken is not None:
        raise CheckpointError(f"{weights_path}: the weights hold NaN or infinite values (first in {broken!r}); "
                              "its scores would be NaN: retrain this partition")
    feature_set = sidecar["config"].get("feature_set")
    if isinstance(feature_set, str) and feature_set not in feature_set_names():  # the settings', not the files' fault
        raise ValueError(f"{sidecar_path}: trained on the feature set {feature_set!r}, which this process "
                         f"does not define (it has {', '.join(feature_set_names())}): set QPIPE_FEATURE_SETS to the "
                         "file that defines it, for the code server and the daemon too")
    try:
        config = ModelConfig.from_json(sidecar["config"], source=str(sidecar_path))
        model = build_model(config)
        model.load_state_dict(state_dict)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{sidecar_path}: the weights in {weights_path.name} do not fit the recorded model: {error}") from error
    return Checkpoint(model.to(device).eval(), config, sidecar["columns"], sidecar)


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it is process-wide)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file here: mkstemp's 0600 would hide checkpoints from a team


def _stage(final: Path, data: bytes) -> Path:
    """Write ``data`` to a synced temporary file next to ``final``."""
    descriptor, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


# what the scores depend on beside the weights: edited, the same weights would score otherwise in silence
DEFINITION = ("architecture", "config", "feature_set", "columns", "concepts", "processor_state")


def _sha256_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _json_safe(value: Any) -> Any:
    """NaN/inf -> null (strict JSON), numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("qpipe", "torch", "numpy", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    versions["qpipe_source"] = _source_revision()
    return versions


def _source_revision() -> str:
    """The git commit of the qpipe source that trained (``+changes`` when it had uncommitted ones): its package
    version stays 0.1.0 from commit to commit. "" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed qpipe: git would answer for whatever repository holds the venv
        return ""
    try:
        head, changes = (subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
                         for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]))
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode:
        return ""
    return head.stdout.strip() + ("+changes" if changes.stdout.strip() else "")
