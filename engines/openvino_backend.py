"""OpenVINO backend: ONNX (the contract, users' models, Q/DQ INT8) and OpenVINO IR (.xml) on
the CPU.

- Precision comes from the model or a hint: a Q/DQ model runs as INT8; otherwise "auto" asks
  for bf16 where the CPU has it (AVX512-BF16 or AMX) and f32 elsewhere. Whether bf16 is
  faster than ONNX Runtime depends on the CPU (AMX or not), so --backend auto measures it
  (engines.autoselect).
- `threads` is per call and `streams` the number of calls in flight (the pipeline's
  --workers): the model is compiled with that many CPU streams and a pool of as many infer
  requests, so infer() may be called from several threads at once.
- The contract metadata is read from the model's rt_info, where OpenVINO keeps ONNX
  metadata_props (and IR saved from it keeps them too).
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Backend, ClosingEngine, EngineError, EngineInfo
from engines.contract import METADATA_KEY, int8_sibling, parse_metadata
from engines.model_io import ModelIO, TensorSpec

PRECISIONS = ("fp32", "bf16")
HINTS = {"fp32": "f32", "bf16": "bf16"}


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512-BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def model_metadata(model: Any) -> dict[str, Any]:
    """The contract's JSON entry from rt_info ({} for a model without one)."""
    if not model.has_rt_info(["framework", METADATA_KEY]):
        return {}
    return parse_metadata(model.get_rt_info(["framework", METADATA_KEY]).astype(str))


def read_model(core: Any, path: Path) -> Any:
    """An ov.Model, or EngineError naming the file. ONNX goes through the ONNX frontend alone:
    Core.read_model would try every frontend on a broken file and print their C++ logs."""
    import openvino as ov
    from openvino.frontend import FrontEndManager

    onnx = Path(path).suffix.lower() == ".onnx"
    try:
        if onnx:
            frontend = FrontEndManager().load_by_framework("onnx")
            return frontend.convert(frontend.load(str(path)))
        return core.read_model(str(path))
    except (RuntimeError, ov.frontend.GeneralFailure, ov.frontend.OpConversionFailure) as error:
        reason = [line for line in str(error).splitlines()
                  if line.strip() and not line.startswith(("Exception from", "Check "))]
        kind = "ONNX model" if onnx else "OpenVINO model"
        raise EngineError(f"{path} is not a loadable {kind} ({(reason or ['unreadable'])[-1][:200]}); "
                          "re-export it or pass the right file with --model") from None


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))


def is_quantized(model: Any) -> bool:
    """A Q/DQ model (ONNX QuantizeLinear/DequantizeLinear become FakeQuantize or Convert ops
    on int8 constants in OpenVINO's graph)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) or any(
        op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
        and len(op.get_output_partial_shape(0)) == 4 for op in model.get_ops())


class OpenVinoEngine(ClosingEngine):
    """Runs an ONNX or IR model with OpenVINO on the CPU; forms as in engines.model_io."""

    def __init__(self, path: Path, labels: dict[str, Any] | None = None, threads: int | None = None,
                 precision: str = "auto", streams: int = 1):
        import openvino as ov

        load_started = time.perf_counter()
        core = ov.Core()
        model = read_model(core, path)
        self.metadata = model_metadata(model)
        self.io = ModelIO.inspect(path, [_spec(p) for p in model.inputs],
                                  [_spec(p) for p in model.outputs], self.metadata, labels)
        quantized = self.metadata.get("precision") == "int8" or is_quantized(model)
        if precision == "auto":
            precision = "bf16" if cpu_has_bf16(core) else "fp32"
        if precision not in PRECISIONS:
            raise EngineError(f"--precision {precision} with OpenVINO: use fp32 or bf16 (an INT8 "
                              "model runs as INT8 by itself)")
        if precision == "bf16" and not cpu_has_bf16(core):
            raise EngineError("--precision bf16: this CPU has no bf16 support (AVX512-BF16 or AMX); "
                              "use --precision fp32")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision],
                                  "NUM_STREAMS": max(1, streams), "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads * max(1, streams)
        started = time.perf_counter()
        self.compiled = core.compile_model(model, "CPU", config)
        compile_seconds = time.perf_counter() - started
        self.outputs = [self.compiled.output(name) for name in self.io.output_names]
        # One request per call in flight; a thread takes one, runs it and gives it back.
        self.requests: queue.Queue = queue.Queue()
        for _ in range(max(1, streams)):
            self.requests.put(self.compiled.create_infer_request())
        height, width = self.io.input_size
        self.info = EngineInfo(
            path=Path(path), backend="openvino", precision="int8" if quantized else precision,
            input_height=height, input_width=width, classes=self.io.classes,
            max_batch=self.io.max_batch, device="cpu", resize=self.io.resize,
            details={"input_layout": self.io.input_layout, "output": self.io.output_kind,
                     "openvino": ov.__version__, "streams": max(1, streams),
                     "compile_seconds": round(compile_seconds, 3),
                     "load_seconds": round(time.perf_counter() - load_started, 3),
                     "lowering": self.metadata.get("lowering", {}),
                     "provenance": self.metadata.get("provenance", {})})

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] → class ids [N, h, w]."""
        request = self.requests.get()
        try:
            # Shared, not copied, both ways (0.15 → 0.09 caller CPU ms a call, session 27): the
            # input is not touched until the call returns, and the outputs are copied here before
            # the request, whose buffers they are, goes back to the pool.
            results = request.infer({0: self.io.prepare(images)}, share_inputs=True, share_outputs=True)
            outputs = [np.array(results[port]) for port in self.outputs]
        finally:
            self.requests.put(request)
        return self.io.finish(outputs)

    def close(self) -> None:
        self.requests = queue.Queue()
        self.compiled = None


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def open_engine(path: Path, labels: dict | None, **options: Any) -> OpenVinoEngine:
    if not available():
        raise EngineError(f"{path}: the OpenVINO backend needs openvino; install it with "
                          "pip install -e \".[openvino]\"")
    return OpenVinoEngine(path, labels=labels, **options)


def offers(path: Path) -> list[tuple[Path, str]]:
    """An .onnx in f32, in bf16 where the CPU has it, and its INT8 sibling when there is one
    (engines.autoselect times them against ONNX Runtime; its f32 is usually the slower)."""
    if not available():
        return []
    import openvino as ov

    precisions = ["bf16", "fp32"] if cpu_has_bf16(ov.Core()) else ["fp32"]
    sibling = int8_sibling(path)
    return [(Path(path), p) for p in precisions] + ([(sibling, "auto")] if sibling.is_file() else [])


def missing() -> str | None:
    """What installing OpenVINO would add, where it is not installed."""
    if available():
        return None
    return ("OpenVINO is not installed: on the AVX512 CPUs measured it ran the shipped model "
            "1.7-3x faster than ONNX Runtime (pip install -e \".[openvino]\", ~180 MB; auto then "
            "times both)")


BACKEND = Backend(
    name="openvino", suffixes=(".xml",), precisions=PRECISIONS, parallel_calls=True,
    options=("threads", "precision", "streams"), open=open_engine,
    precision_hint="OpenVINO runs fp32 or bf16 and runs a Q/DQ model as INT8; make one with "
                   "python -m calibration --precision {precision}, or add --backend tensorrt",
    also_opens=(".onnx",), offers=offers, missing=missing)
