"""Lower an ONNX model's precision in the form TensorRT 10 and 11 build strongly typed.

- FP16: every float tensor inside the graph becomes float16; the uint8 image input and the
  class-id output keep their types.
- INT8: explicit quantization, QuantizeLinear/DequantizeLinear pairs from calibration frames
  (ONNX Runtime's quantize_static), per-channel symmetric int8 weight scales on axis 0, biases
  left in float, opset >= 13, in one of two activation forms:
  - "s8" (default): int8 activations with zero point 0, the form TensorRT requires and
    OpenVINO runs fastest;
  - "u8": asymmetric uint8 activations, the form ONNX Runtime's x86 int8 kernels want (with s8
    activations it fuses only some convolutions and runs slower than FP32).

The lowering takes what it needs as parameters (the ONNX, calibration frames already at the
input size), so the TensorRT build uses it with neither the training code nor the live app;
activation ranges are cached per model, frames and method.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

from engines.contract import record_precision
from engines.files import cache_root, file_sha256
from engines.frames import frames_digest

log = logging.getLogger(__name__)

# Ops whose inputs get Q/DQ: the convolutions (TensorRT fuses Q/DQ + Conv + bias + ReLU into an
# int8 kernel) and the residual Adds (so int8 tensors stay int8 across the skip connection).
QUANTIZED_OPS = ["Conv", "Add"]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_FORMS = ("s8", "u8")


# Inputs that the ONNX spec requires in float32 whatever the data type (Resize's roi/scales).
FLOAT32_ONLY_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


def convert_fp16(onnx_in: Path, onnx_out: Path) -> Path:
    """FP16 copy of the model with its input/output types unchanged.

    Float initializers and constants become float16, Casts to float cast to float16, and
    float graph inputs/outputs get a boundary Cast so callers still exchange float32. Written
    here because onnxconverter-common's converter loops forever on graphs whose Cast nodes it
    must keep (issue seen with onnxconverter-common 1.16 on this project's export).
    """
    model = onnx.load(str(onnx_in))
    graph = model.graph
    keep32 = {node.input[i] for node in graph.node
              for i in FLOAT32_ONLY_INPUTS.get(node.op_type, ()) if i < len(node.input)}
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep32:
            tensor.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            if (node.op_type == "Constant" and attribute.name == "value"
                    and attribute.t.data_type == TensorProto.FLOAT and node.output[0] not in keep32):
                attribute.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attribute.t).astype(np.float16), attribute.t.name))
    boundary = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = graph_input.name + "_fp16"
            for node in graph.node:
                node.input[:] = [inner if name == graph_input.name else name for name in node.input]
            boundary.append(onnx.helper.make_node("Cast", [graph_input.name], [inner],
                                                  to=TensorProto.FLOAT16))
    if boundary:
        nodes = boundary + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = graph_output.name + "_fp16"
            for node in graph.node:
                node.output[:] = [inner if name == graph_output.name else name for name in node.output]
            graph.node.append(onnx.helper.make_node("Cast", [inner], [graph_output.name],
                                                    to=TensorProto.FLOAT))
    del graph.value_info[:]  # stale float32 annotations; types are re-inferred
    record_precision(model, "fp16", {"tool": "engines.lowering.convert_fp16"})
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_out))
    return onnx_out


class FrameReader(CalibrationDataReader):
    """ONNX Runtime CalibrationDataReader over uint8 frames, one frame per batch."""

    def __init__(self, input_name: str, frames: np.ndarray):
        self.input_name = input_name
        self.frames = frames
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.frames):
            return None
        frame = self.frames[self.position:self.position + 1]
        self.position += 1
        return {self.input_name: frame}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.frames)


def matching_nodes(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """The graph's node names that match any of `patterns` (exact names or shell-style globs,
    e.g. "*/stem/*"); ValueError (one line) for a pattern that matches none."""
    names = [node.name for node in model.graph.node]
    matched: list[str] = []
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise ValueError(f"--exclude {pattern!r} matches no node of the model; node names look "
                             f"like {names[0]!r}")
        matched += [name for name in hits if name not in matched]
    return matched


def quantize_int8(onnx_in: Path, onnx_out: Path, frames: np.ndarray, method: str = "percentile",
                  cache_path: Path | None = None, exclude_nodes: list[str] | None = None,
                  activations: str = "s8") -> Path:
    """Q/DQ INT8 model calibrated on `frames` (uint8 BGR at the input size).

    With `cache_path`, the activation ranges are saved there and reused on the next call, so a
    rebuild skips the calibration pass.
    """
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method {method!r}: use one of {', '.join(methods)}")
    if activations not in ACTIVATION_FORMS:
        raise ValueError(f"activations {activations!r}: use s8 (TensorRT, OpenVINO) or u8 (ONNX Runtime)")
    symmetric = activations == "s8"
    model = onnx.load(str(onnx_in))
    if model.opset_import[0].version < 13:
        raise ValueError(f"{onnx_in} uses opset {model.opset_import[0].version}; per-channel Q/DQ "
                         "needs opset 13 or newer: re-export with a newer opset")
    excluded = matching_nodes(model, exclude_nodes or [])
    input_name = model.graph.input[0].name
    reader = FrameReader(input_name, frames)
    quantize_static(
        str(onnx_in), str(onnx_out), reader, quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=False,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
        calibrate_method=methods[method],
        calibration_cache_path=str(cache_path) if cache_path else None,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                       "QuantizeBias": False, "CalibPercentile": 99.999},
    )
    quantized = onnx.load(str(onnx_out))
    record_precision(quantized, "int8", {
        "tool": "onnxruntime quantize_static (QDQ)", "calibration_method": method,
        "activations": activations, "calibration_frames": int(len(frames)),
        "excluded_nodes": excluded, "exclude_patterns": exclude_nodes or []})
    onnx.save(quantized, str(onnx_out))
    return onnx_out


def qdq_facts(model: onnx.ModelProto) -> dict[str, Any]:
    """What TensorRT cares about in a Q/DQ model, read from the graph itself."""
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points, weight_scales, int32_dq = [], [], 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            zp = initializers[node.input[2]]
            zero_points.append(zp)
            if node.op_type == "DequantizeLinear" and zp.dtype == np.int32:
                int32_dq += 1
        source = node.input[0]
        if node.op_type == "DequantizeLinear" and source in initializers \
                and initializers[source].dtype == np.int8 and initializers[source].ndim == 4:
            scale = initializers[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            weight_scales.append((scale.size, initializers[source].shape[0], axis))
    return {
        "opset": model.opset_import[0].version,
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node),
        "all_zero_points_zero": all(not np.any(zp) for zp in zero_points),
        "zero_point_types": sorted({str(zp.dtype) for zp in zero_points}),
        "conv_weights_quantized": len(weight_scales),
        "per_channel_weights": bool(weight_scales) and all(
            size == channels and axis == 0 for size, channels, axis in weight_scales),
        "int32_bias_dequantize": int32_dq,
    }


def calibration_cache_dir() -> Path:
    return cache_root() / "calibration"


def calibration_cache_file(cache_dir: Path, onnx_sha256: str, frames: np.ndarray, method: str,
                           activations: str = "s8") -> Path:
    """Activation ranges depend on the model, the calibration frames, the method and whether
    they are symmetric only."""
    form = "" if activations == "s8" else f".{activations}"
    return Path(cache_dir) / f"{onnx_sha256[:16]}.{frames_digest(frames)}.{method}{form}.json"


def lower_precision(onnx_path: Path, precision: str, out: Path, frames: np.ndarray | None = None,
                    method: str = "percentile", cache_dir: Path | None = None,
                    exclude: list[str] | None = None,
                    activations: str = "s8") -> tuple[Path, dict[str, Any]]:
    """Write the FP16 or INT8 Q/DQ ONNX; returns its path and facts for logs.

    INT8 needs `frames`: uint8 BGR [N, H, W, 3] at the model's input size (engines.frames
    samples them from a video, folder or glob).
    """
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist")
    if precision == "fp16":
        convert_fp16(onnx_path, out)
        return out, {"precision": "fp16"}
    if precision != "int8":
        raise ValueError(f"precision {precision!r}: use fp16 or int8")
    if frames is None or not len(frames):
        raise ValueError("int8 needs calibration frames: pass --calib VIDEO|FOLDER|GLOB")
    cache_dir = Path(cache_dir) if cache_dir else calibration_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = calibration_cache_file(cache_dir, file_sha256(onnx_path), frames, method, activations)
    cached = cache.exists()
    log.info("int8 (%s activations) calibration on %d frames (%s), ranges %s %s", activations,
             len(frames), method, cache, "reused" if cached else "computed")
    started = time.perf_counter()
    quantize_int8(onnx_path, out, frames, method, cache, exclude, activations)
    facts = qdq_facts(onnx.load(str(out)))
    facts.update(calibration_frames=len(frames), method=method, activations=activations,
                 cache=str(cache),
                 cache_hit=cached, seconds=round(time.perf_counter() - started, 2))
    return out, facts
