"""What a data-parallel checkpoint step hands its ranks, and what rank 0 hands back, as files in a work dir.

No pickle: the frames are one ``.npy`` file per array (read back memory-mapped, so K ranks on one
machine share the page cache instead of K copies), the config and the rest are JSON, and the
trained weights are safetensors.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch

from qpipe.models.config import ModelConfig
from qpipe.training.frame import TrainingFrame
from qpipe.training.result import TrainResult

_ARRAYS = ("features", "label", "dates", "instruments", "is_sample", "concepts", "concept_row")


@dataclass(frozen=True)
class Job:
    config: ModelConfig  # its seed set: every rank must draw the same initial weights and batch order
    train: TrainingFrame
    valid: TrainingFrame | None
    device: str  # "cpu" or "cuda" (rank i trains on cuda:i of the GPUs it sees)
    threads: int  # torch threads per rank


def write_job(folder: Path, job: Job) -> None:
    frames = {"train": job.train, "valid": job.valid}
    for name, frame in frames.items():
        if frame is not None:
            _write_frame(folder / name, frame)
    (folder / "job.json").write_text(json.dumps({
        "config": job.config.to_json(), "device": job.device, "threads": job.threads,
        "columns": {name: frame.columns for name, frame in frames.items() if frame is not None},
    }))


def read_job(folder: Path) -> Job:
    document = json.loads((folder / "job.json").read_text())
    columns = document["columns"]
    return Job(ModelConfig.from_json(document["config"], source=str(folder / "job.json")),
               _read_frame(folder / "train", columns["train"]),
               _read_frame(folder / "valid", columns["valid"]) if "valid" in columns else None,
               document["device"], document["threads"])


def write_result(folder: Path, result: TrainResult) -> None:
    """The weights as safetensors, every other field as JSON (NaN kept: this file is read back by Python only)."""
    safetensors.torch.save_file(result.state_dict, folder / "result.safetensors")
    record = {field.name: getattr(result, field.name) for field in dataclasses.fields(result) if field.name != "state_dict"}
    (folder / "result.json").write_text(json.dumps(record))


def read_result(folder: Path) -> TrainResult:
    record: dict[str, Any] = json.loads((folder / "result.json").read_text())
    return TrainResult(state_dict=safetensors.torch.load_file(folder / "result.safetensors"), **record)


def _write_frame(folder: Path, frame: TrainingFrame) -> None:
    folder.mkdir(parents=True)
    for name in _ARRAYS:
        array = getattr(frame, name)
        if array is not None:  # instruments may be an object array of str: stored as fixed-width unicode
            np.save(folder / f"{name}.npy", array.astype(str) if name == "instruments" else array, allow_pickle=False)


def _read_frame(folder: Path, columns: list[str]) -> TrainingFrame:
    arrays = {name: np.load(path, mmap_mode="r", allow_pickle=False)
              for name in _ARRAYS if (path := folder / f"{name}.npy").exists()}
    return TrainingFrame(columns=columns, **arrays)
