"""TensorRT backend: serialized engines (.engine/.plan) run with pycuda buffers and a stream.

Rules this follows (../shared/DESIGN.md):
- name-based I/O API (num_io_tensors, get_tensor_*, set_input_shape, set_tensor_address,
  execute_async_v3), the only one in TensorRT 10 and 11;
- the CUDA context is retained and used on the thread that calls infer() (the pipeline's
  inference thread), pushed and popped around every call; nothing happens at import time;
- buffers are sized and typed from the engine (uint8 ids, or INT64 when a graph's ArgMax is
  not cast), page-locked on the host so the copies are truly asynchronous;
- the sidecar is checked before anything is deserialized, and a mismatch is refused with the
  command that rebuilds the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Backend, ClosingEngine, EngineError, EngineInfo
from engines.cache import read_sidecar, refusal, sidecar_mismatches
from engines.labels import classes_from_json
from engines.tensorrt_runtime import gpu_facts, import_pycuda, import_tensorrt

NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


class CudaContext:
    """The device's primary context, pushed for the duration of a `with` block on this thread."""

    def __init__(self, cuda: Any, device_index: int):
        self.cuda = cuda
        self.context = cuda.Device(device_index).retain_primary_context()

    def __enter__(self) -> "CudaContext":
        self.context.push()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cuda.Context.pop()


class TensorRTEngine(ClosingEngine):
    """Runs a serialized TensorRT engine; input `image` uint8 NHWC, output class ids."""

    def __init__(self, path: Path, labels: dict[str, Any] | None = None, device_index: int = 0,
                 onnx_sha256: str | None = None):
        self.path = Path(path)
        facts = read_sidecar(self.path)
        self.trt = import_tensorrt(allow_lean=bool(facts.get("version_compatible")))
        gpu_name, capability = gpu_facts(device_index)
        problems = sidecar_mismatches(facts, self.trt.__version__, gpu_name, capability, onnx_sha256)
        if problems:
            raise refusal(self.path, facts, problems)
        self.facts = facts
        self.device_index = device_index
        classes = labels["classes"] if labels else classes_from_json(facts["classes"], f"{path} sidecar")
        height, width = facts["input_size"]
        self.info = EngineInfo(
            path=self.path, backend="tensorrt", precision=facts["precision"], input_height=height,
            input_width=width, classes=classes, max_batch=facts["batch"][2],
            device=f"cuda:{device_index} {gpu_name}",
            details={"tensorrt": self.trt.__version__, "module": self.trt.__name__,
                     "version_compatible": facts.get("version_compatible", False)})
        self._ready = False

    def _setup(self) -> None:
        """Deserialize and allocate on the calling thread (the inference thread)."""
        trt = self.trt
        self.cuda = import_pycuda()
        self.cuda_context = CudaContext(self.cuda, self.device_index)
        with self.cuda_context:
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            if self.facts.get("version_compatible"):
                self.runtime.engine_host_code_allowed = True
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise EngineError(f"TensorRT could not deserialize {self.path}; rebuild it with "
                                  "python -m engines.build")
            self.context = self.engine.create_execution_context()
            self.stream = self.cuda.Stream()
            self.buffers: dict[str, tuple[np.ndarray, Any]] = {}
            max_batch = self.info.max_batch
            for index in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(index)
                is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = NUMPY_DTYPES[self.engine.get_tensor_dtype(name).name]
                shape = list(self.engine.get_tensor_shape(name))
                shape[0] = max_batch  # the dynamic batch axis, at its profile maximum
                host = self.cuda.pagelocked_empty(int(np.prod(shape)), dtype)
                device = self.cuda.mem_alloc(host.nbytes)
                self.context.set_tensor_address(name, int(device))
                self.buffers[name] = (host, device)
                if is_input:
                    self.input_name = name
                else:
                    self.output_name = name
        self._ready = True

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] → class ids [N, H, W] (N up to the profile's maximum)."""
        if not self._ready:
            self._setup()
        batch = len(images)
        if batch > self.info.max_batch:
            raise EngineError(f"batch {batch} exceeds the engine's profile maximum "
                              f"{self.info.max_batch}; rebuild with --batch 1:{batch}:{batch}")
        with self.cuda_context:
            host_in, device_in = self.buffers[self.input_name]
            host_out, device_out = self.buffers[self.output_name]
            count_in = images.size
            host_in[:count_in] = images.reshape(-1)
            self.context.set_input_shape(self.input_name, images.shape)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            count_out = int(np.prod(out_shape))
            # Copy in, run, copy out on one stream: the GPU orders them, the host waits once.
            self.cuda.memcpy_htod_async(device_in, host_in[:count_in], self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")
            self.cuda.memcpy_dtoh_async(host_out[:count_out], device_out, self.stream)
            self.stream.synchronize()
            return host_out[:count_out].reshape(out_shape).copy()

    def close(self) -> None:
        if self._ready:
            with self.cuda_context:
                for _, device in self.buffers.values():
                    device.free()
                self.buffers.clear()
                self.context = self.engine = self.runtime = None
            self._ready = False


def open_engine(path: Path, labels: dict | None, precision: str = "fp16", calib: str | None = None,
                batch: tuple[int, int, int] = (1, 1, 1), device_index: int = 0) -> TensorRTEngine:
    """A serialized engine as it is; an .onnx is built on first use (like jetson-inference)
    and the cached engine is reused after that."""
    from engines.build import build_engine
    from engines.files import file_sha256

    if Path(path).suffix.lower() == ".onnx":
        precision = "fp16" if precision == "auto" else precision
        engine_path = build_engine(Path(path), precision, calib=calib, batch=batch,
                                   device_index=device_index)
        return TensorRTEngine(engine_path, labels=labels, device_index=device_index,
                              onnx_sha256=file_sha256(path))
    return TensorRTEngine(path, labels=labels, device_index=device_index)


BACKEND = Backend(
    name="tensorrt", suffixes=(".engine", ".plan"), precisions=("fp32", "fp16", "int8"),
    parallel_calls=False, options=("precision", "calib", "batch", "device_index"), open=open_engine,
    precision_hint="TensorRT builds fp32, fp16 or int8 engines from an .onnx")
