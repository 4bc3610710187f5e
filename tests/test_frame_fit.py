"""Stretch and letterbox fitting of frames to a model's input, and of labels back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import engines
from engines.frame_fit import PAD_VALUE, content_labels, letterbox_box, to_input
from helpers import REPO, camvid_or_skip, logits_model, run_app, write_video


def test_letterbox_keeps_the_aspect_and_centres_the_frame():
    frame = np.full((360, 640, 3), 200, np.uint8)
    fitted = to_input(frame, (320, 320), "letterbox")
    top, left, height, width = letterbox_box((360, 640), (320, 320))
    assert fitted.shape == (320, 320, 3) and (top, left, height, width) == (70, 0, 180, 320)
    assert (fitted[:top] == PAD_VALUE).all() and (fitted[top + height:] == PAD_VALUE).all()
    assert (fitted[top:top + height] == 200).all()
    assert to_input(frame, (320, 320)).shape == (320, 320, 3)  # stretch


def test_content_labels_drop_the_padding_even_on_a_coarser_map():
    labels = np.zeros((160, 160), np.uint8)  # half the 320x320 input
    labels[:35], labels[125:] = 9, 9  # the padded bands, at the map's own scale
    kept = content_labels(labels, (360, 640), (320, 320), "letterbox")
    assert kept.shape == (90, 160) and not (kept == 9).any()
    assert content_labels(labels, (360, 640), (320, 320), "stretch") is labels


def test_a_letterboxed_export_runs_end_to_end(assets, tmp_path):
    model = logits_model(tmp_path / "square.onnx", size=(64, 64))
    labels = json.loads(assets["labels4"].read_text())
    labels["input"]["resize"] = "letterbox"
    labels_path = tmp_path / "labels.json"
    labels_path.write_text(json.dumps(labels))
    with engines.load(model, "onnxruntime", labels_path) as engine:
        assert engine.info.resize == "letterbox"
    video = write_video(tmp_path / "wide.mp4", 10, size=(320, 180))
    out = tmp_path / "o.mp4"
    result = run_app(str(video), "--headless", "--model", str(model), "--labels", str(labels_path),
                     "--save", str(out))
    assert result.returncode == 0, result.stderr
    assert "saved 10 frames at 320x180" in result.stderr


def readme_python_snippet() -> str:
    """The README's "From Python" example, as printed there."""
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n", text.index("### From Python")) + len("```python\n")
    return text[start:text.index("\n```\n", start) + 1]


def test_the_readme_python_example_runs_on_a_real_frame(tmp_path):
    # The snippet as a user pastes it, on a CamVid val frame at a dashcam's size.
    camvid = camvid_or_skip()
    frame = cv2.imread(str(sorted((camvid / "val").glob("*.png"))[0]))
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.resize(frame, (960, 540)))
    done = subprocess.run([sys.executable, "-c", readme_python_snippet()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "ROADSEG_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    share = float(done.stdout.split(": ")[1].split("%")[0])
    assert 15 < share < 60, done.stdout  # a CamVid street: the road, not all or nothing


def test_segment_returns_the_apps_labels_at_the_frames_size():
    camvid = camvid_or_skip()
    frames = np.stack([cv2.resize(cv2.imread(str(path)), (640, 360))
                       for path in sorted((camvid / "val").glob("*.png"))[:2]])
    with engines.load("roadseg", "onnxruntime") as engine:
        height, width = engine.info.input_size
        one = engines.segment(engine, frames[0])
        both = engines.segment(engine, frames)
        # The app's steps: bilinear resize to the input, one call, nearest back to the frame.
        direct = engine.infer(cv2.resize(frames[0], (width, height))[None])[0]
    assert one.shape == (360, 640) and both.shape == (2, 360, 640)
    assert (both[0] == one).all()
    assert (one == cv2.resize(direct, (640, 360), interpolation=cv2.INTER_NEAREST)).all()


@pytest.mark.parametrize("bad", [None, np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.float32),
                                 np.zeros((0, 64, 3), np.uint8)])
def test_segment_refuses_what_is_not_a_frame_in_one_line(assets, bad):
    with engines.load(assets["tiny"], "onnxruntime") as engine:
        with pytest.raises(engines.EngineError) as error:
            engines.segment(engine, bad)
    assert "uint8 BGR frame" in str(error.value) and "\n" not in str(error.value)
