"""Precision lowering with a calibration cache, and the accuracy report against FP32."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import engines
from calibration.lowering import convert_fp16, qdq_facts, quantize_int8
from calibration.sampling import frames_digest, sample_frames
from engines.cache import file_sha256
from training.camvid import CamVid
from training.evaluate import evaluate_engine

CALIBRATION_CACHE_DIR = Path(os.environ.get("ROADSEG_CACHE", Path.home() / ".cache" / "roadseg")) / "calibration"
# Accuracy budgets from the TensorRT issue: mIoU points lost against FP32.
BUDGET_POINTS = {"fp16": 0.1, "int8": 1.0}


def calibration_cache_file(cache_dir: Path, onnx_sha256: str, frames: np.ndarray, method: str) -> Path:
    """Activation ranges depend on the model, the calibration frames and the method only."""
    return Path(cache_dir) / f"{onnx_sha256[:16]}.{frames_digest(frames)}.{method}.json"


def lower_precision(onnx_path: Path, precision: str, out: Path, calib: str | None = None,
                    calib_frames: int = 100, method: str = "percentile",
                    cache_dir: Path = CALIBRATION_CACHE_DIR,
                    exclude: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the FP16 or INT8 Q/DQ ONNX; returns its path and facts for logs."""
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist")
    if precision == "fp16":
        convert_fp16(onnx_path, out)
        return out, {"precision": "fp16"}
    if precision != "int8":
        raise ValueError(f"precision {precision!r}: use fp16 or int8")
    if not calib:
        raise ValueError("int8 needs calibration frames: pass --calib VIDEO|FOLDER|GLOB")
    height, width = engines.load(onnx_path).info.input_size
    frames = sample_frames(calib, calib_frames, (height, width))
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    cache = calibration_cache_file(cache_dir, file_sha256(onnx_path), frames, method)
    cached = cache.exists()
    started = time.perf_counter()
    quantize_int8(onnx_path, out, frames, method, cache, exclude)
    facts = qdq_facts(onnx.load(str(out)))
    facts.update(calibration_frames=len(frames), method=method, cache=str(cache),
                 cache_hit=cached, seconds=round(time.perf_counter() - started, 2))
    return out, facts


def accuracy_report(fp32_path: Path, lowered: dict[str, Path], data: Path, split: str = "val",
                    limit: int | None = None) -> dict[str, Any]:
    """mIoU, Road IoU and pixel agreement of each lowered model vs the FP32 model (ORT)."""
    dataset = CamVid(data, split)
    images, labels = dataset.load_images(limit), dataset.load_labels(limit)
    rows: dict[str, Any] = {}
    reference = engines.load(fp32_path)
    reference_ids = np.concatenate([reference.infer(images[i:i + 1]) for i in range(len(images))])
    for precision, path in {"fp32": Path(fp32_path), **lowered}.items():
        engine = engines.load(path)
        metrics = evaluate_engine(engine, images, labels)
        ids = np.concatenate([engine.infer(images[i:i + 1]) for i in range(len(images))])
        rows[precision] = {"path": str(path), "mean_iou": metrics["mean_iou"],
                           "road_iou": metrics["per_class_iou"].get("Road"),
                           "pixel_accuracy": metrics["pixel_accuracy"],
                           "per_class_iou": metrics["per_class_iou"],
                           "agreement_with_fp32": float((ids == reference_ids).mean())}
    for precision, row in rows.items():
        row["delta_miou_points"] = (row["mean_iou"] - rows["fp32"]["mean_iou"]) * 100
        budget = BUDGET_POINTS.get(precision)
        row["within_budget"] = None if budget is None else -row["delta_miou_points"] <= budget
    return {"split": split, "frames": len(images), "results": rows}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"accuracy on CamVid {report['split']} ({report['frames']} frames), ONNX Runtime CPU",
             f"{'precision':<10}{'mIoU %':>8}{'Δ pts':>8}{'Road %':>8}{'agree %':>9}  budget"]
    for precision, row in report["results"].items():
        verdict = "-" if row["within_budget"] is None else ("ok" if row["within_budget"] else "MISSED")
        lines.append(f"{precision:<10}{row['mean_iou'] * 100:>8.2f}{row['delta_miou_points']:>8.2f}"
                     f"{(row['road_iou'] or 0) * 100:>8.2f}{row['agreement_with_fp32'] * 100:>9.3f}  {verdict}")
    return "\n".join(lines)

