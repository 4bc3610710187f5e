"""ONNX Runtime backend: the project's contract models and users' float-input logits models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Backend, ClosingEngine, EngineError, EngineInfo
from engines.contract import METADATA_KEY, int8_sibling, parse_metadata
from engines.model_io import ModelIO, TensorSpec

# ONNX Runtime's tensor type strings → numpy.
ORT_TYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16,
             "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
             "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in node.shape)
    return TensorSpec(node.name, shape, np.dtype(ORT_TYPES.get(node.type, np.void)))


def _open_session(path: Path, options: Any, providers: list[str]) -> Any:
    """An InferenceSession, or EngineError with the first line of why ONNX Runtime refused it."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    # What InferenceSession raises for a file it cannot load (pybind11 types, not RuntimeError).
    load_errors = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
                   ort_errors.InvalidArgument, ort_errors.NoSuchFile, ort_errors.NotImplemented,
                   ort_errors.RuntimeException)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except load_errors as error:
        first_line = str(error).strip().splitlines()[0][:200]
        raise EngineError(f"{path} is not a loadable ONNX model ({first_line}); re-export it "
                          "or pass the right file with --model") from None


class OnnxRuntimeEngine(ClosingEngine):
    """Runs an .onnx model on ONNX Runtime (CPU by default); input and output forms as in
    engines.model_io. One session serves calls from several threads at once."""

    def __init__(self, path: Path, labels: dict[str, Any] | None = None, threads: int | None = None,
                 spin: bool = True, providers: list[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Spinning workers burn a core while idle; inside the threaded pipeline that core is
        # needed by decode and render, so the pipeline turns it off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        started = time.perf_counter()
        self.session = _open_session(path, options, providers or ["CPUExecutionProvider"])
        session_seconds = time.perf_counter() - started
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.io = ModelIO.inspect(path, [_spec(i) for i in inputs], [_spec(o) for o in outputs],
                                  self.metadata, labels)
        self.input_name = inputs[0].name
        height, width = self.io.input_size
        self.info = EngineInfo(
            path=Path(path), backend="onnxruntime", precision=self.metadata.get("precision", "fp32"),
            input_height=height, input_width=width, classes=self.io.classes,
            max_batch=self.io.max_batch, device="cpu", resize=self.io.resize,
            details={"input_layout": self.io.input_layout, "output": self.io.output_kind,
                     "heads": list(self.io.output_names),
                     "providers": self.session.get_providers(),
                     "load_seconds": round(session_seconds, 3),
                     "lowering": self.metadata.get("lowering", {}),
                     "provenance": self.metadata.get("provenance", {})})

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] → class ids [N, h, w]."""
        outputs = self.session.run(list(self.io.output_names), {self.input_name: self.io.prepare(images)})
        return self.io.finish(outputs)

    def close(self) -> None:
        self.session = None


def open_engine(path: Path, labels: dict | None, **options: Any) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, labels=labels, **options)


def offers(path: Path) -> list[tuple[Path, str]]:
    """The file as it is, and its INT8 sibling when there is one (ONNX Runtime runs s8 Q/DQ
    slowly on x86, but that is for the measurement to say)."""
    sibling = int8_sibling(path)
    return [(Path(path), "auto")] + ([(sibling, "auto")] if sibling.is_file() else [])


BACKEND = Backend(
    name="onnxruntime", suffixes=(".onnx",), precisions=("fp32",), parallel_calls=True,
    options=("threads", "spin", "providers"), open=open_engine,
    precision_hint="the precision is the ONNX file's; make one with python -m calibration "
                   "--precision {precision}, or add --backend tensorrt",
    offers=offers)
