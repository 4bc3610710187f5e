"""The accuracy a lowered model costs: mIoU, Road IoU and agreement against the FP32 model on
labelled CamVid frames. The lowering itself is engines.lowering; this part needs the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import engines
from engines.camvid import CamVid
from engines.frame_fit import engine_labels
from engines.metrics import score_label_maps

# Accuracy budgets from the TensorRT issue: mIoU points lost against FP32.
BUDGET_POINTS = {"fp16": 0.1, "int8": 0.5}


def accuracy_report(fp32_path: Path, lowered: dict[str, Path], data: Path, split: str = "val",
                    limit: int | None = None,
                    runtimes: tuple[str, ...] = ("onnxruntime",)) -> dict[str, Any]:
    """mIoU, Road IoU and pixel agreement of each lowered model, on each CPU runtime asked
    for, against the FP32 model on ONNX Runtime."""
    dataset = CamVid(data, split)
    images, labels = dataset.load_images(limit), dataset.load_labels(limit)
    rows: dict[str, Any] = {}
    with engines.load(fp32_path, "onnxruntime") as reference:
        reference_ids = np.stack(list(engine_labels(reference, images)))
    variants = [("onnxruntime", "fp32", Path(fp32_path))]
    variants += [(runtime, precision, Path(path)) for runtime in runtimes
                 for precision, path in lowered.items()]
    variants += [(runtime, "fp32", Path(fp32_path)) for runtime in runtimes if runtime != "onnxruntime"]
    for runtime, precision, path in variants:
        # OpenVINO's fp32 is asked for explicitly: its default on a bf16 CPU is bf16.
        with engines.load(path, runtime, precision="fp32") as engine:
            # One pass: the same labels are scored and compared with FP32's.
            ids = np.stack(list(engine_labels(engine, images)))
            metrics = score_label_maps(zip(ids, labels, strict=True), engine.info.classes)
        rows[f"{runtime} {precision}"] = {
                           "path": str(path), "runtime": runtime, "precision": precision,
                           "mean_iou": metrics["mean_iou"],
                           "road_iou": metrics["per_class_iou"].get("Road"),
                           "pixel_accuracy": metrics["pixel_accuracy"],
                           "per_class_iou": metrics["per_class_iou"],
                           "agreement_with_fp32": float((ids == reference_ids).mean())}
    for row in rows.values():
        row["delta_miou_points"] = (row["mean_iou"] - rows["onnxruntime fp32"]["mean_iou"]) * 100
        budget = BUDGET_POINTS.get(row["precision"])
        row["within_budget"] = None if budget is None else -row["delta_miou_points"] <= budget
    return {"split": split, "frames": len(images), "results": rows}


def format_report(report: dict[str, Any]) -> str:
    """The report as a fixed-width table, one row per precision."""
    lines = [f"accuracy on CamVid {report['split']} ({report['frames']} frames), CPU; reference "
             "ONNX Runtime fp32",
             f"{'runtime precision':<20}{'mIoU %':>8}{'Δ pts':>8}{'Road %':>8}{'agree %':>9}  budget"]
    for name, row in report["results"].items():
        verdict = "-" if row["within_budget"] is None else ("ok" if row["within_budget"] else "MISSED")
        lines.append(f"{name:<20}{row['mean_iou'] * 100:>8.2f}{row['delta_miou_points']:>8.2f}"
                     f"{(row['road_iou'] or 0) * 100:>8.2f}{row['agreement_with_fp32'] * 100:>9.3f}  {verdict}")
    return "\n".join(lines)

