"""Reading the checkpoints training.train writes: the network, its class table, its input size.

A checkpoint is a dict of tensors and plain types: "model" (state dict), "args" (the training
arguments, "model_size" among them), "epoch", "num_classes", "classes" (JSON class table),
"input_size" ([height, width] it is meant to run at), "metrics". Older checkpoints lack the
last two keys and get CamVid's defaults.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from engines.contract import DEFAULT_INPUT_SIZE
from engines.labels import CAMVID_CLASSES, ClassInfo, classes_from_json
from engines.roadsegnet import LiteSegNet, RoadSegNet, build_model


class CheckpointError(ValueError):
    """A file that is not a checkpoint training.train wrote; the message is one line."""


def read_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict a checkpoint holds, tensors on `device`; raises CheckpointError (one line) for a
    file that is missing, unreadable, carries code, or lacks the weights or the network's size."""
    what = "is not a checkpoint written by training.train"
    # weights_only: a checkpoint is tensors and plain types, so a file that carries code is refused.
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        # torch's own text runs to a dozen lines about weights_only; one is enough here.
        raise CheckpointError(f"{path} {what} (not a weights-only PyTorch file: "
                              f"{type(error).__name__}); a file that carries code is refused") from None
    if not (isinstance(checkpoint, dict) and "model" in checkpoint
            and "model_size" in checkpoint.get("args", {})):
        raise CheckpointError(f"{path} {what} (it lacks the weights or the network's size)")
    return checkpoint


# The weight averages a training checkpoint can hold beside its weights, by key.
AVERAGES = {"ema": "moving average", "swa": "epoch average"}


def load_checkpoint_model(path: Path, weights: str = "model") -> tuple[RoadSegNet | LiteSegNet, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained with and load its weights strictly.

    `weights`: "model", the weights as trained; "ema", the moving average of them that
    training keeps with --ema; or "swa", their average over epochs (--swa-from). Both
    averages are stored as AveragedModel states ("module."-prefixed keys).
    The context vector is pooled as in training (the window of --context-window, if any).
    Raises CheckpointError for anything else.
    """
    checkpoint = read_checkpoint(path)
    net = build_model(checkpoint["args"]["model_size"], checkpoint.get("num_classes", 11),
                      tuple(checkpoint["args"].get("instance_norm") or ()))
    if weights in AVERAGES:
        if weights not in checkpoint:
            raise CheckpointError(f"{path} has no {AVERAGES[weights]} (a run with "
                                  f"{'--ema' if weights == 'ema' else '--swa-from'} keeps one); "
                                  "use its trained weights")
        state = {key.removeprefix("module."): value for key, value in checkpoint[weights].items()
                 if key.startswith("module.")}
    else:
        state = checkpoint["model"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit the network it names "
                              f"({str(error).splitlines()[0]})") from None
    # A network trained with a windowed context (training.train --context-window) runs with it.
    window = checkpoint["args"].get("context_window")
    if window:
        net.pool_context_over(tuple(window))
    return net.eval(), checkpoint


def checkpoint_classes(checkpoint: dict[str, Any]) -> list[ClassInfo]:
    """The class table a checkpoint was trained with (older checkpoints: CamVid's)."""
    if "classes" in checkpoint:
        return classes_from_json(checkpoint["classes"], "checkpoint")
    return CAMVID_CLASSES[:checkpoint.get("num_classes", len(CAMVID_CLASSES))]


def checkpoint_input_size(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """(height, width) the checkpoint's network is meant to run at."""
    height, width = checkpoint.get("input_size", DEFAULT_INPUT_SIZE)
    return int(height), int(width)


def total_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs behind a checkpoint's weights, warm restarts (--init) included."""
    return checkpoint["args"].get("prior_epochs", 0) + checkpoint["epoch"] + 1
