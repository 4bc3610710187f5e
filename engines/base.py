"""The Engine interface every backend implements, and the error they raise for bad models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from engines.labels import ClassInfo


# Key of the ONNX metadata_props entry holding the class table and provenance (JSON).
METADATA_KEY = "segmentation"


class EngineError(ValueError):
    """A model that cannot be used as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class EngineInfo:
    """What the pipeline needs to know about a loaded model."""

    path: Path
    backend: str  # "onnxruntime", "tensorrt", "torch"
    precision: str  # "fp32", "fp16", "int8", "mixed"
    input_height: int
    input_width: int
    classes: list[ClassInfo]
    max_batch: int | None = None  # None: any batch size
    device: str = "cpu"
    details: dict = field(default_factory=dict)  # backend-specific facts for logs and reports

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the engine expects its images at."""
        return self.input_height, self.input_width


class Engine(Protocol):
    """uint8 BGR images [N, H, W, 3] at the engine's input size → class ids [N, h, w].

    The output is usually at the input size; a user's model may return a coarser map, which
    the renderer upsamples like any other.
    """

    info: EngineInfo

    def infer(self, images: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
