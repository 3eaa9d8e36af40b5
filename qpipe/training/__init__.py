"""The one training engine: samplers, the Qlib NN training loop, prediction and checkpoints."""

from qpipe.models.config import build_model
from qpipe.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from qpipe.training.engine import epoch_line, predict, train
from qpipe.training.frame import TrainingFrame
from qpipe.training.result import TrainResult

__all__ = [
    "Checkpoint", "CheckpointError", "TrainResult", "TrainingFrame",
    "build_model", "epoch_line", "load_checkpoint", "predict", "save_checkpoint", "train",
]
