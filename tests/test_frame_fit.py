"""Stretch and letterbox fitting of frames to a model's input, and of labels back."""

from __future__ import annotations

import json

import numpy as np

import engines
from engines.frame_fit import PAD_VALUE, content_labels, letterbox_box, to_input
from helpers import logits_model, run_app, write_video


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
