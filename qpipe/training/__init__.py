"""The one training engine: samplers, the Qlib NN training loop, prediction and checkpoints."""

from qpipe.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from qpipe.training.engine import TrainResult, build_model, epoch_line, predict, train
from qpipe.training.frame import TrainingFrame

__all__ = [
    "Checkpoint", "CheckpointError", "TrainResult", "TrainingFrame",
    "build_model", "epoch_line", "load_checkpoint", "predict", "save_checkpoint", "train",
]
