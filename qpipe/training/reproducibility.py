"""Device choice and seeding: the same config and data on a CPU give byte-identical weights.

CPU kernels are deterministic for a fixed thread count, so seeding python, numpy and torch and
ordering the batches with a dedicated torch.Generator is enough. ``torch.use_deterministic_algorithms``
is not switched on: it made the CPU LSTM step 17% slower (measured: 1.18 s vs 1.00 s forward+backward,
batch 800, hidden 64 x 2, one thread), and on CUDA it needs CUBLAS_WORKSPACE_CONFIG. On a GPU,
``repeatable_cuda`` pins cuDNN to deterministic kernels and turns TF32 off (``python -m qpipe.bench gpu``
checks both: a seeded GPU run repeats, and a GPU scores as the CPU does).
"""

import random
import secrets

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto",
                   setting: str = "QPIPE_DEVICE or the checkpoint's device") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is taken as a torch device name (``setting``: where it
    was set, for the message)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = torch.device(device)
    if target.type == "cuda" and (not torch.cuda.is_available() or (target.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {str(device)!r}: {torch.cuda.device_count()} CUDA device(s) visible here "
                         f"({setting}; auto uses a GPU when there is one)")
    return target


def repeatable_cuda() -> None:
    """cuDNN's deterministic kernels, without autotuning (its pick may differ run to run), and float32 matmuls
    without TF32 (10-bit mantissas), so a seeded GPU run repeats and scores as the CPU does up to rounding."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def draw_seed() -> int:
    return secrets.randbelow(2**31)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (weight init, dropout); return the generator that orders the batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
