"""Engines: one interface (`Engine`), small backends chosen by model file suffix.

    engine = engines.load("engines/models/roadseg.onnx")   # or a shipped name: "roadseg-small"
    labels = engine.infer(images)        # uint8 BGR [N, H, W, 3] → class ids [N, H, W]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from engines.base import Engine, EngineError, EngineInfo
from engines.labels import LabelsError, load_labels_file

__all__ = ["Engine", "EngineError", "EngineInfo", "DEFAULT_MODEL", "load", "backend_for",
           "resolve_model", "shipped_models"]

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
    if path.parent == Path(".") and not path.suffix and shipped.is_file():
        return shipped
    if path == DEFAULT_MODEL:
        hint = "train and export it (README, 'Default model')"
    else:
        hint = f"check the --model path, or name a shipped model ({', '.join(shipped_models())})"
    raise EngineError(f"model file {path} does not exist; {hint}")


def _onnxruntime(path: Path, labels: dict | None, **options: Any) -> Engine:
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    return OnnxRuntimeEngine(path, labels=labels, **options)


def _torch(path: Path, labels: dict | None, **options: Any) -> Engine:
    try:
        from engines.torch_backend import TorchEngine
    except ImportError as error:
        raise EngineError(f"{path}: the PyTorch backend needs torch ({error}); install it with "
                          "pip install -e \".[train]\"") from None
    return TorchEngine(path, labels=labels, **options)


def _tensorrt(path: Path, labels: dict | None, precision: str = "fp16", calib: str | None = None,
              batch: tuple[int, int, int] = (1, 1, 1), **options: Any) -> Engine:
    from engines.build import build_engine
    from engines.cache import file_sha256
    from engines.tensorrt_backend import TensorRTEngine

    if path.suffix.lower() == ".onnx":
        # Like jetson-inference: build on first use, then reuse the cached engine.
        precision = "fp16" if precision == "auto" else precision
        engine_path = build_engine(path, precision, calib=calib, batch=batch)
        return TensorRTEngine(engine_path, labels=labels, onnx_sha256=file_sha256(path), **options)
    return TensorRTEngine(path, labels=labels, **options)


# backend name → (factory, file suffixes it opens). Imports are deferred so that a machine
# without TensorRT or PyTorch never imports them.
BACKENDS: dict[str, tuple[Callable[..., Engine], tuple[str, ...]]] = {
    "onnxruntime": (_onnxruntime, (".onnx",)),
    "torch": (_torch, (".pt", ".pth")),
    "tensorrt": (_tensorrt, (".engine", ".plan")),
}


def backend_for(path: Path) -> str:
    """The backend that opens this file by default, from its suffix."""
    suffix = Path(path).suffix.lower()
    for name, (_, suffixes) in BACKENDS.items():
        if suffix in suffixes:
            return name
    known = sorted({s for _, suffixes in BACKENDS.values() for s in suffixes})
    raise EngineError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; expected one of "
                      f"{', '.join(known)}")


def load(path: str | Path = DEFAULT_MODEL, backend: str = "auto", labels: str | Path | None = None,
         **options: Any) -> Engine:
    """Open a model file (or a shipped model by name) with the backend its suffix (or
    `backend`) selects.

    `labels` is a JSON class table for a model without one in its metadata (or to override it).
    Backend options (threads, precision, ...) pass through to the backend.
    """
    path = resolve_model(path)
    name = backend_for(path) if backend == "auto" else backend
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; available here: {', '.join(sorted(BACKENDS))}")
    try:
        table = load_labels_file(Path(labels)) if labels else None
    except LabelsError as error:
        raise EngineError(str(error)) from None
    factory, _ = BACKENDS[name]
    return factory(path, table, **options)
