"""One input spec for every kind of source (positional INPUT or --input), as videoSource(uri)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from helpers import run_app, write_video
from realtime.sources import source_kind
from streams import MjpegCamera


@pytest.mark.parametrize("spec,kind", [("0", "camera"), ("/dev/video2", "camera"),
                                       ("rtsp://10.0.0.5/live", "stream"), ("http://cam/x.mjpg", "stream"),
                                       ("udp://0.0.0.0:5000", "stream"), ("frames/*.png", "images"),
                                       ("shot.jpg", "images"), ("drive.mkv", "video")])
def test_spec_kinds(spec, kind):
    assert source_kind(spec) == kind


def test_every_kind_runs_from_one_positional_argument(assets, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(4):
        cv2.imwrite(str(folder / f"{index:03d}.png"), np.full((120, 160, 3), 50 * index, np.uint8))
    video = write_video(tmp_path / "clip.mp4", 12)
    with MjpegCamera(frames=200) as camera:
        cases = {str(video): 12, str(folder): 4, str(folder / "*.png"): 4, str(folder / "001.png"): 1,
                 camera.url: 10}
        for spec, frames in cases.items():
            summary = tmp_path / "s.json"
            extra = ["--max-frames", "10"] if spec.startswith("http") else []
            result = run_app(spec, "--headless", "--model", str(assets["tiny"]), "--summary-json",
                             str(summary), *extra)
            assert result.returncode == 0, (spec, result.stderr)
            report = json.loads(summary.read_text())
            assert report["frames"] + report["dropped"] == frames, spec
    result = run_app("--input", str(video), "--headless", "--max-frames", "2")
    assert result.returncode == 0, result.stderr
