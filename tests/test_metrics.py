"""The shared confusion-matrix metrics on hand-made label maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engines.metrics import ConfusionMatrix


def test_seed_example_all_background():
    # 90 % background, 10 % foreground, everything predicted background.
    target = np.zeros((10, 10), np.uint8)
    target[0] = 1
    matrix = ConfusionMatrix(2)
    matrix.update(np.zeros_like(target), target)
    assert matrix.pixel_accuracy() == pytest.approx(0.90)
    assert matrix.iou().tolist() == pytest.approx([0.90, 0.0])
    assert matrix.mean_iou() == pytest.approx(0.45)


def test_void_is_ignored():
    target = np.array([[0, 1, 11, 11]])
    prediction = np.array([[0, 1, 0, 1]])
    matrix = ConfusionMatrix(11, ignore_index=11)
    matrix.update(prediction, target)
    assert matrix.matrix.sum() == 2
    assert matrix.pixel_accuracy() == 1.0
    summary = matrix.summary([f"c{i}" for i in range(11)])
    assert summary["per_class_iou"]["c0"] == 1.0 and summary["per_class_iou"]["c5"] is None
    assert summary["mean_iou"] == 1.0  # classes absent from truth and prediction do not count


def test_iou_by_hand_and_accumulation():
    # truth:      0 0 1 1 2     prediction: 0 1 1 1 0
    truth = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    matrix = ConfusionMatrix(3)
    matrix.update(pred[:2], truth[:2])
    matrix.update(pred[2:], truth[2:])
    # class 0: TP 1, FP 1 (the 2), FN 1 → 1/3; class 1: TP 2, FP 1 → 2/3; class 2: 0
    assert matrix.iou().tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)
    assert matrix.mean_iou() == pytest.approx((1 / 3 + 2 / 3) / 3)


def test_drivable_iou_merges_classes():
    truth = np.array([3, 3, 0, 0])
    pred = np.array([3, 0, 0, 3])
    matrix = ConfusionMatrix(4)
    matrix.update(pred, truth)
    result = matrix.summary(["a", "b", "c", "road"], drivable_ids=[3])
    assert result["drivable_iou"] == pytest.approx(1 / 3)


def test_empty_matrix_is_nan_not_an_error():
    matrix = ConfusionMatrix(3)
    assert math.isnan(matrix.pixel_accuracy()) and math.isnan(matrix.mean_iou())


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(np.zeros((2, 2)), np.zeros((2, 3)))
