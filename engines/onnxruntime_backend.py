"""ONNX Runtime backend: the project's contract models and users' float-input logits models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Backend, ClosingEngine, EngineError, EngineInfo
from engines.contract import DEFAULT_INPUT_SIZE, METADATA_KEY, parse_metadata
from engines.labels import ClassInfo, LabelsError, classes_from_json


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


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
    """Runs an .onnx model on ONNX Runtime (CPU by default).

    Two input forms are accepted:
    - the contract: uint8 [N, H, W, 3] BGR, preprocessing inside the graph;
    - a user's float [N, 3, H, W] RGB input, normalised on the host with the mean/std of the
      labels file's "input" section (torchvision's convention by default).
    Two output forms: integer class ids [N, H, W], or float logits [N, C, H, W] (argmax on host).
    """

    def __init__(self, path: Path, labels: dict[str, Any] | None = None, threads: int | None = None,
                 spin: bool = True, providers: list[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Spinning workers burn a core while idle; inside the threaded pipeline that core is
        # needed by decode and render, so the pipeline turns it off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = _open_session(path, options, providers or ["CPUExecutionProvider"])
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise EngineError(f"{path} has {len(inputs)} inputs; a segmentation model takes one image "
                              "input")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_layout = self._check_input(path, inputs[0])
        self.output_kind = self._check_output(path, outputs[0])
        classes = self._class_table(path, labels, outputs[0])
        height, width = self._input_size(inputs[0], labels)
        self.mean, self.std = self._normalisation(labels)
        batch = _static(inputs[0].shape[0])
        self.info = EngineInfo(
            path=Path(path), backend="onnxruntime", precision=self.metadata.get("precision", "fp32"),
            input_height=height, input_width=width, classes=classes, max_batch=batch,
            device="cpu", details={"input_layout": self.input_layout, "output": self.output_kind,
                                   "providers": self.session.get_providers(),
                                   "provenance": self.metadata.get("provenance", {})})

    # -- model inspection -----------------------------------------------------------------
    def _check_input(self, path: Path, node: Any) -> str:
        shape = node.shape
        if len(shape) != 4:
            raise EngineError(f"{path}: input {node.name!r} has shape {shape}; expected an image "
                              "batch [N, H, W, 3] uint8 or [N, 3, H, W] float")
        if node.type == "tensor(uint8)" and shape[3] == 3:
            return "nhwc_uint8_bgr"
        if node.type in ("tensor(float)", "tensor(float16)") and shape[1] == 3:
            return "nchw_float_rgb"
        raise EngineError(f"{path}: input {node.name!r} is {node.type} {shape}; supported are "
                          "uint8 [N, H, W, 3] BGR and float [N, 3, H, W] RGB")

    def _check_output(self, path: Path, node: Any) -> str:
        shape = node.shape
        integer = node.type in ("tensor(uint8)", "tensor(int32)", "tensor(int64)", "tensor(int8)",
                                "tensor(uint16)", "tensor(int16)")
        if len(shape) == 3 and integer:
            return "class_ids"
        if len(shape) == 4 and node.type in ("tensor(float)", "tensor(float16)"):
            return "logits"
        raise EngineError(f"{path}: output {node.name!r} is {node.type} {shape}, which is not a "
                          "segmentation map (an image classifier?); expected class ids [N, H, W] "
                          "or logits [N, C, H, W]")

    def _class_table(self, path: Path, labels: dict | None, output: Any) -> list[ClassInfo]:
        if labels is not None:
            classes = labels["classes"]
        elif "classes" in self.metadata:
            try:
                classes = classes_from_json(self.metadata["classes"], f"{path} metadata")
            except LabelsError as error:
                raise EngineError(f"{error}; pass a class table with --labels") from None
        else:
            raise EngineError(f"{path} carries no class table in its metadata; pass one with "
                              "--labels FILE.json (see README, 'Bring your own model')")
        channels = _static(output.shape[1]) if self.output_kind == "logits" else None
        if channels is not None and channels != len(classes):
            raise EngineError(f"labels do not match the model: {path} outputs {channels} classes "
                              f"but the class table has {len(classes)}; pass the labels file made "
                              "for this model")
        known = self.metadata.get("classes")
        if labels is not None and known and len(known) != len(classes):
            raise EngineError(f"labels do not match the model: {path} was trained on {len(known)} "
                              f"classes but the labels file has {len(classes)}; drop --labels or "
                              "pass the file made for this model")
        return classes

    def _input_size(self, node: Any, labels: dict | None) -> tuple[int, int]:
        h_axis, w_axis = (1, 2) if self.input_layout == "nhwc_uint8_bgr" else (2, 3)
        height, width = _static(node.shape[h_axis]), _static(node.shape[w_axis])
        if height and width:
            return height, width
        declared = (labels or {}).get("input") or self.metadata.get("input") or {}
        if "height" in declared and "width" in declared:
            return int(declared["height"]), int(declared["width"])
        return DEFAULT_INPUT_SIZE

    def _normalisation(self, labels: dict | None) -> tuple[np.ndarray, np.ndarray]:
        declared = (labels or {}).get("input") or {}
        mean = np.asarray(declared.get("mean", (0.485, 0.456, 0.406)), np.float32)
        std = np.asarray(declared.get("std", (0.229, 0.224, 0.225)), np.float32)
        return mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1)

    # -- inference ------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] → class ids [N, h, w]."""
        if self.input_layout == "nhwc_uint8_bgr":
            feed = images
        else:
            rgb = images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) * (1 / 255)
            feed = (rgb - self.mean) / self.std
        output = self.session.run([self.output_name], {self.input_name: feed})[0]
        if self.output_kind == "logits":
            return output.argmax(axis=1).astype(np.uint8 if output.shape[1] <= 256 else np.int32)
        return output

    def close(self) -> None:
        self.session = None


def open_engine(path: Path, labels: dict | None, **options: Any) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, labels=labels, **options)


BACKEND = Backend(
    name="onnxruntime", suffixes=(".onnx",), precisions=("fp32",), parallel_calls=True,
    options=("threads", "spin", "providers"), open=open_engine,
    precision_hint="the precision is the ONNX file's; make one with python -m calibration "
                   "--precision {precision}, or add --backend tensorrt",
    install="pip install onnxruntime")
