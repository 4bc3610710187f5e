"""Segmentation metrics from one confusion matrix (bincount), shared by training, evaluation,
calibration reports and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import cv2
import numpy as np

from engines.base import Engine
from engines.frame_fit import engine_labels
from engines.labels import CAMVID_CLASSES, CAMVID_VOID, ClassInfo


@dataclass
class ConfusionMatrix:
    """Accumulates a [K, K] matrix (rows: ground truth, columns: prediction); ids ≥ K and the
    `ignore_index` in the ground truth are left out.

    A prediction outside 0..K-1 (a model with classes the dataset lacks, such as the ego
    vehicle) is a miss of the true class and a false positive of none: it is counted in
    `missed`, one entry per true class.
    """

    num_classes: int
    ignore_index: int | None = None
    matrix: np.ndarray = field(init=False)
    missed: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add one batch of integer label maps of equal shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {prediction.shape} != target shape {target.shape}")
        target = target.reshape(-1).astype(np.int64)
        prediction = prediction.reshape(-1).astype(np.int64)
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        target, prediction = target[keep], prediction[keep]
        outside = (prediction < 0) | (prediction >= self.num_classes)
        self.missed += np.bincount(target[outside], minlength=self.num_classes)
        codes = target[~outside] * self.num_classes + prediction[~outside]
        self.matrix += np.bincount(codes, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) + self.missed - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def mean_iou(self) -> float:
        ious = self.iou()
        return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")

    def summary(self, class_names: list[str], drivable_ids: list[int] | None = None) -> dict:
        """Metrics as a JSON-ready dict (fractions, not percent)."""
        ious = self.iou()
        result = {
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_iou": self.mean_iou(),
            "per_class_iou": {name: (None if np.isnan(v) else float(v))
                              for name, v in zip(class_names, ious, strict=True)},
            "pixels": int(self.matrix.sum() + self.missed.sum()),
        }
        if drivable_ids:
            merged = ConfusionMatrix(2)
            is_drivable = np.isin(np.arange(self.num_classes), drivable_ids)
            for truth in (False, True):
                for pred in (False, True):
                    merged.matrix[int(truth), int(pred)] = self.matrix[np.ix_(
                        is_drivable == truth, is_drivable == pred)].sum()
            # A prediction outside the class table is not drivable.
            merged.matrix[:, 0] += [self.missed[~is_drivable].sum(), self.missed[is_drivable].sum()]
            result["drivable_iou"] = float(merged.iou()[1])
        return result


def format_table(summary: dict, title: str = "") -> str:
    """Human-readable metrics table (percent)."""
    lines = [title] if title else []
    lines.append(f"{'class':<14}{'IoU %':>8}")
    for name, value in summary["per_class_iou"].items():
        lines.append(f"{name:<14}{'-' if value is None else f'{value * 100:.2f}':>8}")
    lines.append(f"{'mean IoU':<14}{summary['mean_iou'] * 100:>8.2f}")
    lines.append(f"{'pixel acc.':<14}{summary['pixel_accuracy'] * 100:>8.2f}")
    if "drivable_iou" in summary:
        lines.append(f"{'drivable IoU':<14}{summary['drivable_iou'] * 100:>8.2f}")
    return "\n".join(lines)


def score_label_maps(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                     classes: list[ClassInfo]) -> dict[str, Any]:
    """Score (predicted class ids, CamVid label map) pairs; a prediction of another size is
    brought to the label's with nearest-neighbour. Only CamVid's 11 classes are scored; a
    model's extra classes (the ego vehicle) count as misses."""
    classes = classes[:len(CAMVID_CLASSES)]
    matrix = ConfusionMatrix(len(classes), ignore_index=CAMVID_VOID)
    for prediction, truth in pairs:
        if prediction.shape != truth.shape:
            prediction = cv2.resize(prediction.astype(np.uint8), truth.shape[::-1],
                                    interpolation=cv2.INTER_NEAREST)
        matrix.update(prediction, truth)
    drivable = [c.id for c in classes if c.group == "drivable"]
    return matrix.summary([c.name for c in classes], drivable_ids=drivable)


def evaluate_engine(engine: Engine, images: np.ndarray, labels: np.ndarray,
                    batch_size: int = 1) -> dict[str, Any]:
    """Run the engine on uint8 BGR frames and score its class ids against CamVid label maps
    (at any input size: see `engine_labels`)."""
    predictions = zip(engine_labels(engine, images, batch_size), labels, strict=True)
    return score_label_maps(predictions, engine.info.classes)
