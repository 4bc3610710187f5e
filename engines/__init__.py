"""Engines: one interface (`Engine`), small backends chosen by model file suffix.

    engine = engines.load("engines/models/roadseg.onnx")   # or a shipped name: "roadseg-360x270"
    labels = engine.infer(images)        # uint8 BGR [N, H, W, 3] at its input size → class ids
    labels = engines.segment(engine, frame)   # a frame of any size → class ids at its size
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from engines import autoselect
from engines.autoselect import Choice
from engines.base import Backend, Engine, EngineError, EngineInfo
from engines.frame_fit import segment
from engines.labels import LabelsError, load_labels_file

__all__ = ["Engine", "EngineError", "EngineInfo", "Backend", "BACKENDS", "DEFAULT_MODEL", "load",
           "Choice", "backend_for", "backend_spec", "choose", "resolve_model", "segment", "shipped_models"]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "roadseg.onnx"


def shipped_models() -> list[str]:
    """Names of the models that ship in engines/models (usable as --model NAME)."""
    return sorted(path.stem for path in MODELS_DIR.glob("*.onnx"))


# Names that shipped once, with what replaces them, so that an old command gets the fix.
RETIRED_MODELS = {
    "roadseg-small": "roadseg-360x270, which is faster and more accurate (README, 'Default model')",
}


def resolve_model(path: str | Path) -> Path:
    """A model file path, or the name of a shipped model ("roadseg-360x270") → an existing file."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = MODELS_DIR / f"{path.name}.onnx"
    if path.parent == Path(".") and shipped.is_file():  # "roadseg-360x270", "roadseg.int8"
        return shipped
    if path.parent == Path(".") and path.name in RETIRED_MODELS:
        raise EngineError(f"model {path.name} no longer ships; use --model {RETIRED_MODELS[path.name]}")
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


def labels_table(labels: str | Path | None) -> dict[str, Any] | None:
    """A labels JSON file's class table (None without one); EngineError when it is bad."""
    try:
        return load_labels_file(Path(labels)) if labels else None
    except LabelsError as error:
        raise EngineError(str(error)) from None


def choose(path: str | Path, precision: str = "auto", labels: str | Path | None = None,
           stand_ins: bool = True) -> Choice:
    """What --backend auto runs for this file: backend, file, precision and why.

    Where several installed runtimes can run it (an .onnx: ONNX Runtime, OpenVINO in f32 or
    bf16, an INT8 sibling within its accuracy budget), the fastest measured on this CPU wins
    (engines.autoselect; measured once, then cached). Other files go to their suffix's backend.
    `stand_ins=False` keeps the file itself (no INT8 sibling).
    """
    return _choose(Path(path), precision, labels_table(labels), stand_ins)


def _choose(path: Path, precision: str, table: dict[str, Any] | None, stand_ins: bool) -> Choice:
    """`choose` with the labels file already read."""
    chosen = autoselect.choose(path, BACKENDS, precision, table, stand_ins)
    if chosen is not None:
        return chosen
    suffix = path.suffix.lower()
    for spec in BACKENDS.values():
        if spec.accepts(path):
            return Choice(spec.name, path, precision, f"{suffix} files")
    known = sorted({s for spec in BACKENDS.values() for s in (*spec.suffixes, *spec.also_opens)})
    raise EngineError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; expected one of "
                      f"{', '.join(known)}")


def backend_for(path: str | Path) -> str:
    """The backend that opens this very file under --backend auto."""
    return choose(path, stand_ins=False).backend


def load(path: str | Path = DEFAULT_MODEL, backend: str = "auto", labels: str | Path | None = None,
         **options: Any) -> Engine:
    """Open a model file (or a shipped model by name) with the backend its suffix (or
    `backend`) selects.

    `labels` is a JSON class table for a model without one in its metadata (or to override it).
    Of the options (threads, precision, ...) each backend gets those it declares, so a caller
    can pass one set whatever the backend. The engine is a context manager.
    """
    path = resolve_model(path)
    table = labels_table(labels)
    if backend == "auto":
        # The file the caller named, on the runtime and precision measured fastest for it.
        chosen = _choose(path, options.get("precision", "auto"), table, stand_ins=False)
        backend = chosen.backend
        if chosen.precision != "auto":
            options = {**options, "precision": chosen.precision}
    spec = backend_spec(backend)
    return spec.open(path, table, **spec.select_options(options))
