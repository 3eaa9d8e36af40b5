"""Training profiles: how much a checkpoint trains, as run config of its asset (``TrainConfig`` fields).

``qlib`` is the checkpoint's own defaults, Qlib's benchmark settings: 480 + 120 sessions, up to 200 epochs with
early stopping (minutes on a GPU, an hour or more per recurrent network on two CPU cores). ``quick`` is what the
main job trains (``python -m qpipe.main``), and what the after-close schedule trains with ``QPIPE_TRAINING=quick``:
a few epochs on 240 + 60 sessions, a minute or two per network of the main job's four on two CPU cores, enough to
find the embedded market's planted signal (the Transformer and Localformer: about 3 minutes an epoch there).
"""

from typing import Any, Literal

from qpipe.models.registry import model_parts

Profile = Literal["qlib", "quick"]  # QPIPE_TRAINING
QUICK_WINDOW = {"train_days": 240, "valid_days": 60}
# The MLP takes batches of 512 instead of Qlib's 4096: on 48,000 training rows that gives it enough steps. The
# RNNs are half Qlib's width (hidden 32, not 64): an epoch takes 7 s instead of 27 s on one thread. Every other
# network trains 4 epochs (TabNet's pretraining 2): the Transformer and Localformer (feed-forward width 2048, as in
# Qlib) still need about 3 minutes an epoch on two CPU cores.
QUICK_PARAMS = {"mlp": {"n_epochs": 30, "batch_size": 512},
                **{rnn: {"n_epochs": 4, "hidden_size": 32} for rnn in ("gru", "lstm", "alstm")},
                "tabnet": {"n_epochs": 4, "pretrain_n_epochs": 2}}
QUICK_EPOCHS = 4
QUICK_MODELS = ("mlp", "gru", "lstm", "alstm")  # the main job's default: those that train in minutes on a CPU


def training_window(profile: Profile) -> dict[str, int]:
    """The train_days and valid_days ``profile`` sets (none for ``qlib``: the checkpoint's defaults)."""
    return dict(QUICK_WINDOW) if profile == "quick" else {}


def checkpoint_config(profile: Profile, model: str, epochs: int | None = None) -> dict[str, Any]:
    """The checkpoint asset's config for ``model`` (an architecture, or a variant: its architecture's) under
    ``profile`` (empty for ``qlib``: its defaults); ``epochs`` replaces the profile's ``n_epochs`` (early stopping still
    applies)."""
    arch, _ = model_parts(model)  # (found in review: the schedule trained mlp_alpha158 4 epochs of batch 8192)
    params = dict(QUICK_PARAMS.get(arch, {"n_epochs": QUICK_EPOCHS})) if profile == "quick" else {}
    if epochs:
        params["n_epochs"] = epochs
    return {**training_window(profile), **({"params": params} if params else {})}
