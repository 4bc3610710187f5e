"""The car's own hood: found from a real dashcam's motion (CamVid drive 0001TP shows its hood;
the other drives do not), and kept out of the overlay by the real app."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.hood import NOT_SHOWN, FixedHood, HoodFinder, apply_hood, find_hood, hood_from_spec
from helpers import camvid_or_skip, run_app, write_camvid_video
from training.data import void_to_train_labels

HOOD_DRIVE = "0001TP"


def drive_frames(pattern: str) -> list[Path]:
    return sorted(camvid_or_skip().glob(pattern))


def labelled_hood(image_path: Path) -> np.ndarray:
    """The hood CamVid marks as void in drive 0001TP, as training finds it."""
    labels = cv2.imread(str(image_path.parent.parent / "trainannot" / image_path.name), cv2.IMREAD_GRAYSCALE)
    ego = 99
    return void_to_train_labels(torch.from_numpy(labels[None].copy()), 11, ego, 255)[0].numpy() == ego


def test_finds_the_real_hood_of_drive_0001TP():
    paths = drive_frames(f"train/{HOOD_DRIVE}_*.png")
    hood = find_hood([cv2.imread(str(p)) for p in paths])
    assert hood.found
    truth = labelled_hood(paths[0])
    mask = hood.mask(*truth.shape)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou >= 0.8, f"hood mask IoU {iou:.3f} against the labelled hood"
    # The mask is the bottom of the frame only, never a band through the road.
    assert not mask[: int(0.85 * mask.shape[0])].any()


@pytest.mark.parametrize("pattern", ["train/0006R0_*.png", "train/0016E5_*.png", "val/*.png"])
def test_no_hood_on_drives_without_one(pattern):
    # Every window of 40 frames (the app's first answer comes after about that many) and the
    # whole drive: a busy scene must never be mistaken for a hood.
    frames = [cv2.imread(str(p)) for p in drive_frames(pattern)]
    for start in [*range(0, len(frames) - 40 + 1, 10), None]:
        window = frames if start is None else frames[start:start + 40]
        hood = find_hood(window)
        assert not hood.found, f"{pattern}: a hood of {hood.share():.3f} found in frames {start}+40"


def test_a_parked_car_counts_no_frames():
    # A car that does not move gives every edge the look of a hood: such frames must not count.
    frame = cv2.imread(str(drive_frames(f"train/{HOOD_DRIVE}_*.png")[0]))
    hood = find_hood([frame] * 100)
    assert hood.counted == 1 and not hood.found and hood.mask(360, 480) is None


def test_stride_and_a_new_frame_size():
    # `every` skips frames before any work; another frame size is another camera: start again.
    frames = [cv2.imread(str(p)) for p in drive_frames(f"train/{HOOD_DRIVE}_*.png")[:20]]
    hood = HoodFinder(every=2)
    counted = [hood.add(frame) for frame in frames]
    assert not any(counted[1::2]) and hood.counted <= 10
    hood.add(cv2.resize(frames[0], (640, 360)))
    assert hood.counted == 1 and not hood.found
    # Once it has an answer, the finder looks at every third frame only.
    hood = HoodFinder(min_frames=4)
    counted = [hood.add(frame) for frame in frames]
    settled = [i for i, took in enumerate(counted) if took][3]
    later = [i for i, took in enumerate(counted) if took and i > settled]
    assert later and all(i % 3 == 0 for i in later), counted


def test_spec_fixed_band_and_labels():
    assert isinstance(hood_from_spec("auto"), HoodFinder) and hood_from_spec("off") is None
    band = hood_from_spec("0.25")
    assert isinstance(band, FixedHood)
    labels = np.full((8, 4), 3, np.uint8)
    marked = apply_hood(labels, band, NOT_SHOWN)
    assert (marked[6:] == NOT_SHOWN).all() and (marked[:6] == 3).all() and (labels == 3).all()
    assert apply_hood(labels, None, NOT_SHOWN) is labels
    for bad in ("0.6", "0", "bonnet", "-0.1"):
        with pytest.raises(ValueError, match="between 0 and 0.5"):
            hood_from_spec(bad)


def unchanged_share(output: Path, original: Path, region: np.ndarray) -> float:
    """Share of `region`'s pixels the app wrote exactly as they came in (no overlay)."""
    same = (cv2.imread(str(output)) == cv2.imread(str(original))).all(axis=2)
    return float(same[region].mean())


def test_app_leaves_the_hood_unpainted(assets, tmp_path):
    # The real app on drive 0001TP's frames as a 10 FPS sequence, every class overlaid: once the
    # hood is found its pixels leave the app untouched; with --hood off they are painted.
    paths = drive_frames(f"train/{HOOD_DRIVE}_*.png")
    pattern = str(paths[0].parent / f"{HOOD_DRIVE}_*.png")
    common = ("--images", pattern, "--fps", "10", "--model", str(assets["tiny"]), "--classes", "all",
              "--no-outline", "--no-hud", "--no-legend", "--headless")
    summary = tmp_path / "summary.json"
    auto = run_app(*common, "--save", str(tmp_path / "auto") + "/", "--summary-json", str(summary))
    assert auto.returncode == 0, auto.stderr
    assert "hood: the car's own hood covers" in auto.stderr
    report = json.loads(summary.read_text())["hood"]
    assert report["mode"] == "auto" and 0.025 <= report["share"] <= 0.045, report
    off = run_app(*common, "--save", str(tmp_path / "off") + "/", "--hood", "off")
    assert off.returncode == 0, off.stderr
    last = paths[-1]
    truth = labelled_hood(last)
    assert unchanged_share(tmp_path / "auto" / last.name, last, truth) >= 0.85
    assert unchanged_share(tmp_path / "off" / last.name, last, truth) <= 0.05
    # Above the hood both runs paint the same.
    road = np.zeros_like(truth)
    road[: int(0.8 * truth.shape[0])] = True
    same = cv2.imread(str(tmp_path / "auto" / last.name)) == cv2.imread(str(tmp_path / "off" / last.name))
    assert same.all(axis=2)[road].all()


def test_a_video_written_whole_is_masked_from_its_first_frame(assets, tmp_path):
    # A file processed with --pace all: the app looks ahead in the video's start, so even the
    # first frame it writes leaves the hood unpainted (frames written as PNGs, compared with
    # the same decoder's frames).
    paths = drive_frames(f"train/{HOOD_DRIVE}_*.png")
    video = write_camvid_video(tmp_path / "hood.mp4", len(paths), size=(480, 360),
                               pattern=f"train/{HOOD_DRIVE}_*.png", fps=10)
    result = run_app("--video", str(video), "--pace", "all", "--model", str(assets["tiny"]),
                     "--classes", "all", "--no-outline", "--no-hud", "--no-legend", "--headless",
                     "--max-frames", "3", "--save", str(tmp_path / "out") + "/")
    assert result.returncode == 0, result.stderr
    assert "looked for it in the video's start first" in result.stderr
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    ok, first = capture.read()
    capture.release()
    assert ok
    cv2.imwrite(str(tmp_path / "first.png"), first)
    truth = labelled_hood(paths[0])
    assert unchanged_share(tmp_path / "out" / "frame_000000.png", tmp_path / "first.png", truth) >= 0.85


def test_bad_hood_option_is_one_line(assets):
    result = run_app("--video", str(assets["video"]), "--headless", "--hood", "0.8")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--hood '0.8'" in result.stderr
