"""The recurrent layers' precision under mixed precision (``amp: bf16``)."""

from typing import Any

import torch
from torch import nn


def float32_rnn(rnn: nn.RNNBase, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``rnn(x)``, in float32 with autocast off inside it when autocast is on.

    Under autocast PyTorch runs cuDNN's LSTM and GRU in float16, whatever dtype autocast was asked for
    (aten/src/ATen/cudnn/AutocastRNN.cpp casts to kHalf), and float16 gradients this small need loss scaling,
    which bf16 does without. The layers around the RNN still run in bfloat16.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return rnn(x)
    with torch.autocast(x.device.type, enabled=False):
        return rnn(x.float())
