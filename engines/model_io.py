"""How host images map onto a model's input and its output back onto class ids, for runtimes
that load a user's ONNX as it is (ONNX Runtime, OpenVINO).

Two input forms are accepted:
- the contract: uint8 [N, H, W, 3] BGR, preprocessing inside the graph;
- a user's float [N, 3, H, W] RGB input, normalised on the host with the mean/std of the
  labels file's "input" section (torchvision's convention by default).
Two output forms: integer class ids [N, H, W], or float logits [N, C, H, W] (argmax on host).
A multi-head model (drivable area + lane lines: YOLOP, TwinLiteNet, HybridNets) has its heads
named in the labels file's "outputs"; their class maps are merged into one, later heads
painting over earlier ones where they predict something other than their background. The
labels file's "input" section states the export's conventions: color (rgb/bgr), scale (the
divisor to 0..1, 255), mean and std (on the 0..1 scale), resize (stretch or letterbox).

Each runtime describes its tensors as (name, shape, numpy dtype) with None for a dynamic axis,
and `ModelIO.inspect` does the rest, so the two backends check models the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.base import EngineError
from engines.contract import DEFAULT_INPUT_SIZE
from engines.labels import ClassInfo, LabelsError, classes_from_json

FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as a runtime reports it."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class ModelIO:
    """The checked forms of a model's image input and first output, and the host arithmetic."""

    input_layout: str  # "nhwc_uint8_bgr" or "nchw_float_rgb"
    output_kind: str  # "class_ids" or "logits" (of the first head)
    input_size: tuple[int, int]
    classes: list[ClassInfo]
    max_batch: int | None
    mean: np.ndarray
    std: np.ndarray
    output_names: tuple[str, ...]  # the outputs to fetch, one per head
    head_kinds: tuple[str, ...] = ()
    head_maps: tuple[np.ndarray, ...] = ()  # per head: its class id → merged id (-1: keep)
    swap_rb: bool = True  # the float input wants RGB
    scale: float = 255.0
    resize: str = "stretch"  # engines.frame_fit mode the export expects

    @classmethod
    def inspect(cls, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec],
                metadata: dict[str, Any], labels: dict[str, Any] | None) -> "ModelIO":
        """Check the model's tensors against the accepted forms; EngineError names the mismatch."""
        if len(inputs) != 1:
            raise EngineError(f"{path} has {len(inputs)} inputs; a segmentation model takes one "
                              "image input")
        image = inputs[0]
        layout = _input_layout(path, image)
        heads = (labels or {}).get("heads")
        if heads:
            chosen = _head_outputs(path, outputs, [name for name, _ in heads])
            kinds = tuple(_output_kind(path, spec) for spec in chosen)
            classes = labels["classes"]
            maps = tuple(np.asarray(mapping, np.int16) for _, mapping in heads)
            for spec, kind, mapping in zip(chosen, kinds, maps, strict=True):
                if kind == "logits" and spec.shape[1] is not None and spec.shape[1] != len(mapping):
                    raise EngineError(f"labels do not match the model: output {spec.name!r} has "
                                      f"{spec.shape[1]} classes, the labels file lists {len(mapping)}")
        else:
            chosen = [outputs[0]]
            kinds = (_output_kind(path, outputs[0]),)
            classes = _class_table(path, labels, metadata, outputs[0] if kinds[0] == "logits" else None)
            maps = ()
        declared = (labels or {}).get("input") or {}
        mean = np.asarray(declared.get("mean", (0.485, 0.456, 0.406)), np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(declared.get("std", (0.229, 0.224, 0.225)), np.float32).reshape(1, 3, 1, 1)
        return cls(layout, kinds[0], _input_size(image, layout, labels, metadata), classes,
                   image.shape[0], mean, std, tuple(spec.name for spec in chosen), kinds, maps,
                   declared.get("color", "rgb") == "rgb", float(declared.get("scale", 255.0)),
                   declared.get("resize", "stretch"))

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] → what the model's input takes."""
        if self.input_layout == "nhwc_uint8_bgr":
            return images
        channels = images[..., ::-1] if self.swap_rb else images
        x = channels.transpose(0, 3, 1, 2).astype(np.float32) * (1 / self.scale)
        return (x - self.mean) / self.std

    def finish(self, outputs: list[np.ndarray]) -> np.ndarray:
        """The model's outputs (one per head) → class ids [N, h, w]."""
        if not self.head_maps:
            return _class_ids(outputs[0], self.output_kind)
        merged = None
        for output, kind, mapping in zip(outputs, self.head_kinds, self.head_maps, strict=True):
            ids = mapping[_class_ids(output, kind).astype(np.intp)]
            if merged is None:
                merged = ids
                continue
            if ids.shape != merged.shape:  # heads at other resolutions: nearest to the first's
                ids = np.stack([cv2.resize(i.astype(np.int16), merged.shape[:0:-1],
                                           interpolation=cv2.INTER_NEAREST) for i in ids])
            merged = np.where(ids >= 0, ids, merged)
        return merged.astype(np.uint8)


def _class_ids(output: np.ndarray, kind: str) -> np.ndarray:
    if kind == "logits":
        return output.argmax(axis=1).astype(np.uint8 if output.shape[1] <= 256 else np.int32)
    return output


def _head_outputs(path: Path, outputs: list[TensorSpec], names: list[str]) -> list[TensorSpec]:
    by_name = {spec.name: spec for spec in outputs}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise EngineError(f"labels do not match the model: {path} has no output "
                          f"{', '.join(map(repr, missing))}; its outputs are "
                          f"{', '.join(repr(s.name) for s in outputs)}")
    return [by_name[name] for name in names]


def _input_layout(path: Path, node: TensorSpec) -> str:
    shape = node.shape
    if len(shape) != 4:
        raise EngineError(f"{path}: input {node.name!r} has shape {list(shape)}; expected an image "
                          "batch [N, H, W, 3] uint8 or [N, 3, H, W] float")
    if node.dtype == np.uint8 and shape[3] == 3:
        return "nhwc_uint8_bgr"
    if node.dtype in FLOAT_TYPES and shape[1] == 3:
        return "nchw_float_rgb"
    raise EngineError(f"{path}: input {node.name!r} is {node.dtype} {list(shape)}; supported are "
                      "uint8 [N, H, W, 3] BGR and float [N, 3, H, W] RGB")


def _output_kind(path: Path, node: TensorSpec) -> str:
    if len(node.shape) == 3 and np.issubdtype(node.dtype, np.integer):
        return "class_ids"
    if len(node.shape) == 4 and node.dtype in FLOAT_TYPES:
        return "logits"
    raise EngineError(f"{path}: output {node.name!r} is {node.dtype} {list(node.shape)}, which is "
                      "not a segmentation map (an image classifier?); expected class ids "
                      "[N, H, W] or logits [N, C, H, W]")


def _class_table(path: Path, labels: dict | None, metadata: dict[str, Any],
                 logits: TensorSpec | None) -> list[ClassInfo]:
    if labels is not None:
        classes = labels["classes"]
    elif "classes" in metadata:
        try:
            classes = classes_from_json(metadata["classes"], f"{path} metadata")
        except LabelsError as error:
            raise EngineError(f"{error}; pass a class table with --labels") from None
    else:
        raise EngineError(f"{path} carries no class table in its metadata; pass one with "
                          "--labels FILE.json (see README, 'Bring your own model')")
    channels = logits.shape[1] if logits is not None else None
    if channels is not None and channels != len(classes):
        raise EngineError(f"labels do not match the model: {path} outputs {channels} classes "
                          f"but the class table has {len(classes)}; pass the labels file made "
                          "for this model")
    known = metadata.get("classes")
    if labels is not None and known and len(known) != len(classes):
        raise EngineError(f"labels do not match the model: {path} was trained on {len(known)} "
                          f"classes but the labels file has {len(classes)}; drop --labels or "
                          "pass the file made for this model")
    return classes


def _input_size(node: TensorSpec, layout: str, labels: dict | None,
                metadata: dict[str, Any]) -> tuple[int, int]:
    h_axis, w_axis = (1, 2) if layout == "nhwc_uint8_bgr" else (2, 3)
    height, width = node.shape[h_axis], node.shape[w_axis]
    if height and width:
        return height, width
    declared = (labels or {}).get("input") or metadata.get("input") or {}
    if "height" in declared and "width" in declared:
        return int(declared["height"]), int(declared["width"])
    return DEFAULT_INPUT_SIZE
