"""Engines: one interface (`Engine`), small backends chosen by model file suffix.

    engine = engines.load("engines/models/roadseg.onnx")   # or a shipped name: "roadseg-small"
    labels = engine.infer(images)        # uint8 BGR [N, H, W, 3] → class ids [N, H, W]
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from engines.base import Backend, Engine, EngineError, EngineInfo
from engines.labels import LabelsError, load_labels_file

__all__ = ["Engine", "EngineError", "EngineInfo", "Backend", "BACKENDS", "DEFAULT_MODEL", "load",
           "backend_for", "backend_spec", "choose", "choose_backend", "resolve_model", "shipped_models"]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "roadseg.onnx"


def shipped_models() -> list[str]:
    """Names of the models that ship in engines/models (usable as --model NAME)."""
    return sorted(path.stem for path in MODELS_DIR.glob("*.onnx"))


def resolve_model(path: str | Path) -> Path:
    """A model file path, or the name of a shipped model ("roadseg-small") → an existing file."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = MODELS_DIR / f"{path.name}.onnx"
    if path.parent == Path(".") and shipped.is_file():  # "roadseg-small", "roadseg.int8"
        return shipped
    if path == DEFAULT_MODEL:
        hint = "train and export it (README, 'Default model')"
    else:
        hint = f"check the --model path, or name a shipped model ({', '.join(shipped_models())})"
    raise EngineError(f"model file {path} does not exist; {hint}")


# The registry: one line per backend. Each module declares its own file types, precisions,
# thread-safety and options, and imports its runtime only when a model is opened.
BACKEND_MODULES = (
    "engines.onnxruntime_backend",
    "engines.torch_backend",
    "engines.tensorrt_backend",
    "engines.openvino_backend",
)
BACKENDS: dict[str, Backend] = {spec.name: spec for spec in
                                (importlib.import_module(name).BACKEND for name in BACKEND_MODULES)}


def backend_spec(name: str) -> Backend:
    """The registered backend of that name, or EngineError listing those there are."""
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def choose(path: Path) -> tuple[str, Path, str]:
    """What --backend auto opens for this file: (backend, file, why). A backend that also
    opens the file type may first offer a faster stand-in (an INT8 sibling within budget)."""
    suffix = Path(path).suffix.lower()
    name, reason = choose_backend(path)
    for spec in BACKENDS.values():
        if suffix in spec.also_opens and spec.variant is not None:
            offered = spec.variant(Path(path))
            if offered:
                return spec.name, offered[0], offered[1]
    return name, Path(path), reason


def choose_backend(path: Path) -> tuple[str, str]:
    """The backend --backend auto uses for this file, and why.

    The suffix names a default backend (.onnx → ONNX Runtime); a backend that also opens that
    type takes it over when its own measured rule says it runs the model faster here.
    """
    suffix = Path(path).suffix.lower()
    for spec in BACKENDS.values():
        if suffix in spec.also_opens and spec.prefers is not None:
            reason = spec.prefers(Path(path))
            if reason:
                return spec.name, reason
    for spec in BACKENDS.values():
        if spec.accepts(path):
            return spec.name, f"{suffix} files"
    known = sorted({s for spec in BACKENDS.values() for s in (*spec.suffixes, *spec.also_opens)})
    raise EngineError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; expected one of "
                      f"{', '.join(known)}")


def backend_for(path: Path) -> str:
    """The backend that opens this file under --backend auto."""
    return choose_backend(path)[0]


def load(path: str | Path = DEFAULT_MODEL, backend: str = "auto", labels: str | Path | None = None,
         **options: Any) -> Engine:
    """Open a model file (or a shipped model by name) with the backend its suffix (or
    `backend`) selects.

    `labels` is a JSON class table for a model without one in its metadata (or to override it).
    Of the options (threads, precision, ...) each backend gets those it declares, so a caller
    can pass one set whatever the backend. The engine is a context manager.
    """
    path = resolve_model(path)
    spec = backend_spec(backend_for(path) if backend == "auto" else backend)
    try:
        table = load_labels_file(Path(labels)) if labels else None
    except LabelsError as error:
        raise EngineError(str(error)) from None
    return spec.open(path, table, **spec.select_options(options))
