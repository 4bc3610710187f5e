"""The Engine interface every backend implements, the spec a backend registers with, and the
error they raise for bad models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from engines.labels import ClassInfo


class EngineError(ValueError):
    """A model that cannot be used as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class EngineInfo:
    """What the pipeline needs to know about a loaded model."""

    path: Path
    backend: str  # a registered backend's name
    precision: str  # "fp32", "fp16", "bf16", "int8", "mixed"
    input_height: int
    input_width: int
    classes: list[ClassInfo]
    max_batch: int | None = None  # None: any batch size
    device: str = "cpu"
    details: dict = field(default_factory=dict)  # backend-specific facts for logs and reports
    resize: str = "stretch"  # how frames fit the input: "stretch" or "letterbox" (engines.frame_fit)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the engine expects its images at."""
        return self.input_height, self.input_width


class Engine(Protocol):
    """uint8 BGR images [N, H, W, 3] at the engine's input size → class ids [N, h, w].

    The output is usually at the input size; a user's model may return a coarser map, which
    the renderer upsamples like any other. Engines are context managers: `with
    engines.load(path) as engine:` closes it on every exit path.
    """

    info: EngineInfo

    def infer(self, images: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


class ClosingEngine:
    """Mixin giving a backend's engine the context-manager half of the interface."""

    def close(self) -> None:  # overridden by backends that hold resources
        pass

    def __enter__(self):  # noqa: ANN204 - returns the concrete engine type
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Backend:
    """What a backend declares about itself; the registry, `engines.load` and the CLI's
    choices and checks all read it, so adding a backend is its module plus one registry line.

    `open(path, labels, **options)` imports the runtime only when called, so listing the
    backends never imports torch, TensorRT or ONNX Runtime.
    """

    name: str
    suffixes: tuple[str, ...]  # model files it opens by default
    precisions: tuple[str, ...]  # --precision values it accepts besides "auto"
    parallel_calls: bool  # infer() may run on several threads at once
    options: tuple[str, ...]  # keyword options open() takes; others are not passed
    open: Callable[..., Engine]
    precision_hint: str = ""  # said when a precision it does not accept is asked ({precision})
    # Other file types it opens besides its suffixes (not by default: under --backend auto
    # it competes for them, engines.autoselect).
    also_opens: tuple[str, ...] = ()
    # What it can run a model file as under --backend auto: (file, precision) pairs, the
    # file itself and faster stand-ins (an INT8 sibling); engines.autoselect times them.
    offers: Callable[[Path], list[tuple[Path, str]]] | None = None
    # Where its runtime is not installed: one line saying what installing it would add, which
    # --backend auto appends to its reason (None when installed).
    missing: Callable[[], str | None] | None = None

    def accepts(self, path: Path) -> bool:
        return Path(path).suffix.lower() in self.suffixes

    def select_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options this backend takes; a CLI passes one set for every backend."""
        return {key: value for key, value in options.items() if key in self.options}
