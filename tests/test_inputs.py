"""One input spec for every kind of source (positional INPUT or --input), as videoSource(uri)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from helpers import count_video_frames, run_app, write_video
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
        # A stream URL given as --video is opened as the stream, not read as a file path.
        result = run_app("--video", camera.url, "--headless", "--model", str(assets["tiny"]),
                         "--max-frames", "5", "--summary-json", str(summary))
        assert result.returncode == 0, result.stderr
        report = json.loads(summary.read_text())
        assert report["frames"] + report["dropped"] == 5
    result = run_app("--input", str(video), "--headless", "--max-frames", "2")
    assert result.returncode == 0, result.stderr


def test_a_folder_of_dashcam_clips_plays_as_one_drive(assets, tmp_path):
    clips = tmp_path / "dashcam"
    clips.mkdir()
    write_video(clips / "2026_0001.mp4", 10)
    (clips / "2026_0002.mp4").write_bytes(b"\x00" * 4096)  # a segment the camera never finished
    write_video(clips / "2026_0003.mp4", 14)
    assert source_kind(str(clips)) == "videos" and source_kind(f"{clips}/*.mp4") == "videos"
    out, summary = tmp_path / "drive.mp4", tmp_path / "s.json"
    result = run_app(str(clips), "--model", str(assets["tiny"]), "--headless", "--pace", "all",
                     "--save", str(out), "--save", f"{tmp_path}/frames/",
                     "--summary-json", str(summary), "--metrics", str(tmp_path / "m.jsonl"))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "skipping a clip" in line]
    assert len(warnings) == 1 and "2026_0002.mp4" in warnings[0], result.stderr
    report = json.loads(summary.read_text())
    assert report["frames"] == 24 and report["skipped_files"] == 1
    assert count_video_frames(out)[0] == 24  # one video of the whole drive
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names[0] == "2026_0001_000000.png" and names[-1] == "2026_0003_000013.png"
    assert len(names) == 24
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == names  # each metrics line names its clip and frame
    # An output over one of the clips is refused before the first frame.
    clash = run_app(str(clips), "--model", str(assets["tiny"]), "--headless", "--save",
                    str(clips / "2026_0003.mp4"))
    assert clash.returncode == 2 and "is the input file" in clash.stderr, clash.stderr
    # --video with a glob is the same drive.
    again = run_app("--video", f"{clips}/*.mp4", "--model", str(assets["tiny"]), "--headless",
                    "--pace", "all", "--summary-json", str(summary))
    assert again.returncode == 0 and json.loads(summary.read_text())["frames"] == 24, again.stderr


def test_a_folder_of_only_damaged_clips_is_one_error(assets, tmp_path):
    for name in ("a.mp4", "b.mov"):
        (tmp_path / name).write_bytes(b"\x00" * 4096)
    result = run_app(str(tmp_path), "--model", str(assets["tiny"]), "--headless")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "none of the 2 videos" in errors[0], \
        result.stderr
    assert "Traceback" not in result.stderr
