"""Test helpers: real ONNX models built with onnx.helper, real videos written with OpenCV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.labels import CAMVID_CLASSES, classes_to_json

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("CAMVID_DIR", REPO.parent / "shared" / "data" / "camvid"))
TINY_SIZE = (48, 64)  # (height, width) of the tiny test model's input


def run_app(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` as a user would; returns the finished process."""
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def count_video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """Decode a video to the end: (frames that decode, (width, height))."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames, size


def write_video(path: Path, frames: int, size: tuple[int, int] = (320, 240), fps: float = 30.0,
                noise: bool = False) -> Path:
    """A driving-like synthetic clip: grey road trapezoid, sky, a moving 'car' box (with
    `noise`, sensor-like noise that no encoder can compress away, for large outputs)."""
    width, height = size
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for index in range(frames):
        image = np.full((height, width, 3), (200, 170, 120), np.uint8)
        road = np.array([[0, height], [width, height], [width * 3 // 5, height // 2],
                         [width * 2 // 5, height // 2]], np.int32)
        cv2.fillPoly(image, [road], (90, 90, 90))
        x = (index * 7) % max(1, width - 40)
        cv2.rectangle(image, (x, height * 2 // 3), (x + 40, height * 2 // 3 + 25), (30, 30, 200), -1)
        if noise:
            image = cv2.add(image, rng.integers(0, 60, image.shape, dtype=np.uint8))
        writer.write(image)
    writer.release()
    return path


def contract_model(path: Path, size: tuple[int, int] = TINY_SIZE, num_classes: int = 11,
                   with_metadata: bool = True, seed: int = 0) -> Path:
    """A real ONNX model with the project's contract: uint8 BGR NHWC in, uint8 ids out,
    random 3x3 conv weights (a stand-in for a trained network of the same interface)."""
    height, width = size
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 0.05, (num_classes, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 1, num_classes).astype(np.float32), "b")
    nodes = [
        helper.make_node("Cast", ["image"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
        helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0),
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["ids_f"], ["labels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes, "tiny_contract",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", height, width, 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["batch", height, width])],
        [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if with_metadata:
        classes = CAMVID_CLASSES[:num_classes] if num_classes <= len(CAMVID_CLASSES) else None
        meta = {"classes": classes_to_json(classes or CAMVID_CLASSES),
                "input": {"height": height, "width": width}}
        helper.set_model_props(model, {"segmentation": json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def logits_model(path: Path, size: tuple[int, int] = TINY_SIZE, num_classes: int = 4) -> Path:
    """A user's model in the common export form: float RGB NCHW in, float logits out."""
    height, width = size
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (num_classes, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "user_logits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes, height, width])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def classifier_model(path: Path) -> Path:
    """An image classifier (float NCHW in, [N, 10] scores out): not a segmentation model."""
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.normal(0, 0.1, (10, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["scores"], transB=1)]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def camvid_or_skip() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (expected ../shared/data/camvid beside the repo)")
    return CAMVID


def write_camvid_video(path: Path, frames: int, size: tuple[int, int] = (960, 540),
                       pattern: str = "val/*.png", fps: int = 15) -> Path:
    """CamVid frames (by default the val clip: real dashcam frames at 15 Hz) scaled to `size`
    and encoded as H.264, the way dashcams store it; skips the test when CamVid is absent."""
    from realtime.clip import write_clip

    write_clip(sorted(camvid_or_skip().glob(pattern))[:frames], path, size, fps=fps)
    return path
