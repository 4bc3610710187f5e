"""The model contract in one place: the ONNX metadata schema (read and write), the input the
project's models take, and the facts a backend or a build reads from an ONNX file.

A contract model takes `image` uint8 [N, H, W, 3] BGR and returns `labels` uint8 [N, H, W]
class ids; preprocessing, upsampling and argmax run inside the graph. Its metadata_props entry
`segmentation` holds JSON:

    {"classes": [{"id", "name", "group", "color"}...],
     "input": {"name", "dtype", "layout", "color", "height", "width", "mean", "std"},
     "output": {"name", "dtype", "kind"},
     "precision": "fp16" | "int8" (absent: fp32), "lowering": {...},
     "provenance": {...how it was trained...}}

Functions here take an `onnx.ModelProto` (or a path) so that importing this module needs
neither onnx nor a runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.base import EngineError
from engines.labels import ClassInfo, classes_to_json

if TYPE_CHECKING:
    import onnx

METADATA_KEY = "segmentation"
INPUT_NAME, OUTPUT_NAME = "image", "labels"
# CamVid's frame size, the shipped models' input; also the size assumed for a user's model
# whose input is dynamic and whose labels file declares none.
DEFAULT_INPUT_SIZE = (360, 480)


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """The contract's JSON entry as a dict; {} for a model without one or with unreadable JSON."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The contract metadata of a loaded ONNX model ({} when it has none)."""
    return parse_metadata({p.key: p.value for p in model.metadata_props}.get(METADATA_KEY))


def write_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Replace the contract entry, keeping any other metadata_props the model carries."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps(meta)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def record_precision(model: onnx.ModelProto, precision: str, lowering: dict[str, Any]) -> None:
    """Record a lowered model's precision, and how it was obtained, in its metadata."""
    meta = read_metadata(model)
    meta["precision"] = precision
    meta.setdefault("lowering", {}).update(lowering)
    write_metadata(model, meta)


def contract_metadata(classes: list[ClassInfo], height: int, width: int,
                      mean_bgr: tuple[float, ...], std_bgr: tuple[float, ...],
                      provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata an exported contract model carries."""
    return {
        "classes": classes_to_json(classes),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                  "height": height, "width": width, "mean": list(mean_bgr), "std": list(std_bgr)},
        "output": {"name": OUTPUT_NAME, "dtype": "uint8", "kind": "class_ids"},
        "provenance": provenance or {},
    }


def read_contract(onnx_path: Path) -> tuple[tuple[int, int], list[dict]]:
    """Input (height, width) and class table (JSON form) of a contract ONNX, without a runtime.

    Refuses a model whose input is not uint8 [N, H, W, 3] with static H and W, which is what
    an engine build needs to fix its optimisation profile.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (OSError, DecodeError) as error:
        raise EngineError(f"{onnx_path} is not a readable ONNX model ({error})") from None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[3].dim_value != 3 or not dims[1].dim_value or not dims[2].dim_value:
        raise EngineError(f"{onnx_path}: lowering and engine builds need the project's contract input "
                          "uint8 [N, H, W, 3] with static H and W (export with training.export)")
    return (dims[1].dim_value, dims[2].dim_value), read_metadata(model).get("classes", [])


INT8_BUDGET_POINTS = 0.5  # mIoU points an INT8 variant may lose and still stand in for FP32


def int8_sibling(path: Path) -> Path:
    """Where a model's INT8 Q/DQ form lives when it ships or is written beside it: X.int8.onnx."""
    return Path(path).with_name(f"{Path(path).stem}.int8.onnx")


def record_accuracy(model: onnx.ModelProto, accuracy: dict[str, Any]) -> None:
    """Record what a lowered model costs in accuracy (from the calibration report) in its
    metadata, so that a runtime can decide whether it may stand in for the FP32 model."""
    meta = read_metadata(model)
    meta.setdefault("lowering", {})["accuracy"] = accuracy
    write_metadata(model, meta)


def accuracy_within_budget(meta: dict[str, Any], runtime: str,
                           budget: float = INT8_BUDGET_POINTS) -> float | None:
    """The recorded mIoU change (points) of a lowered model on `runtime` when its loss is
    within budget, else None (also when nothing was recorded)."""
    delta = meta.get("lowering", {}).get("accuracy", {}).get("delta_miou_points", {}).get(runtime)
    return delta if delta is not None and -delta <= budget else None
