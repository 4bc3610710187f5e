"""Reading the checkpoints training.train writes: the network, its class table, its input size.

A checkpoint is a dict of tensors and plain types: "model" (state dict), "args" (the training
arguments, "model_size" among them), "epoch", "num_classes", "classes" (JSON class table),
"input_size" ([height, width] it is meant to run at), "metrics". Older checkpoints lack the
last two keys and get CamVid's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engines.contract import DEFAULT_INPUT_SIZE
from engines.labels import CAMVID_CLASSES, ClassInfo, classes_from_json
from engines.roadsegnet import RoadSegNet, build_model


def load_checkpoint_model(path: Path, weights: str = "model") -> tuple[RoadSegNet, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained with and load its weights strictly.

    `weights`: "model", the weights as trained, or "ema", the moving average of them that
    training keeps with --ema (stored as an AveragedModel state: "module."-prefixed keys).
    """
    # weights_only: a checkpoint is tensors and plain types, so a file that carries code is refused.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = build_model(checkpoint["args"]["model_size"], checkpoint.get("num_classes", 11))
    if weights == "ema":
        if "ema" not in checkpoint:
            raise ValueError(f"{path} has no weight average (a run with --ema keeps one); "
                             "use its trained weights")
        state = {key.removeprefix("module."): value for key, value in checkpoint["ema"].items()
                 if key.startswith("module.")}
    else:
        state = checkpoint["model"]
    net.load_state_dict(state, strict=True)
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
