"""Finding TensorRT, pycuda and the GPU: shared by the engine builder and the TensorRT backend.

Nothing is imported or initialised until a function is called, so a machine without CUDA can
import every module of `engines`.
"""

from __future__ import annotations

import importlib
from typing import Any

from engines.base import EngineError

# Full TensorRT first; the lean runtime runs version-compatible engines without the builder.
TENSORRT_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")


def import_tensorrt(allow_lean: bool = True) -> Any:
    """The TensorRT Python module, or EngineError naming what to install."""
    for name in TENSORRT_MODULES if allow_lean else TENSORRT_MODULES[:1]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise EngineError("TensorRT is not installed: pip install -e \".[gpu]\" (or the lean runtime, "
                      "tensorrt-lean-cu13, for engines built with --version-compatible)")


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise EngineError("the TensorRT backend needs pycuda: pip install -e \".[gpu]\"") from None
    cuda.init()
    return cuda


def gpu_facts(device_index: int = 0) -> tuple[str, str]:
    """(name, compute capability "major.minor") of a CUDA device, without creating a context."""
    cuda = import_pycuda()
    if cuda.Device.count() <= device_index:
        raise EngineError(f"no CUDA GPU {device_index} here ({cuda.Device.count()} found); use "
                          "--backend onnxruntime")
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"
