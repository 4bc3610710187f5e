"""The fleet job on a local Ray with 2 CPUs: real videos, one corrupt file, real engines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import engines
from helpers import REPO, contract_model, write_camvid_video, write_video

pq = pytest.importorskip("pyarrow.parquet", reason="the fleet extra is not installed")
pytest.importorskip("ray", reason="the fleet extra (ray[data]) is not installed")


def run_fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet", *args, "--num-cpus", "2", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def shares_from_engine(model, video, classes: int) -> np.ndarray:
    """Per-frame class shares the way the live app computes labels: OpenCV decode, bilinear
    resize to the input, infer at batch 1."""
    rows = []
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    with engines.load(model) as engine:
        height, width = engine.info.input_size
        while True:
            ok, image = capture.read()
            if not ok:
                break
            labels = engine.infer(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)[None])[0]
            rows.append(np.bincount(labels.ravel(), minlength=classes)[:classes] / labels.size)
    return np.array(rows)


def test_three_videos_one_corrupt_then_a_rerun_does_nothing(tmp_path):
    model = contract_model(tmp_path / "tiny.onnx", size=(96, 128))
    inputs = tmp_path / "archive"
    inputs.mkdir()
    lengths = {"a": 45, "b": 70, "c": 25}
    for name, frames in lengths.items():
        write_video(inputs / f"{name}.mp4", frames, size=(256, 192))
    (inputs / "broken.mp4").write_bytes(b"\x00" * 4096)
    out = tmp_path / "out"
    result = run_fleet(str(inputs), "--out", str(out), "--model", str(model), "--chunk", "20",
                       "--actors", "2", "--batch", "8")
    assert result.returncode == 1, result.stderr  # one failure recorded, the rest finished
    job = json.loads((out / "job.json").read_text())
    assert job["done"] == 3 and job["frames"] == sum(lengths.values())
    assert [f["video"].endswith("broken.mp4") for f in job["failures"]] == [True]
    classes = len(engines.load(model).info.classes)
    for name, frames in lengths.items():
        folder = out / name
        assert json.loads((folder / "summary.json").read_text())["frames"] == frames
        table = pq.read_table(folder / "frames.parquet").to_pandas()
        assert list(table["frame"]) == list(range(frames))  # every frame, in order
        assert np.allclose(table["timestamp"], np.arange(frames) / 30.0)
        shares = table[[c for c in table.columns if c.startswith("share_")]].to_numpy()
        expected = shares_from_engine(model, inputs / f"{name}.mp4", classes)
        assert np.allclose(shares, expected, atol=1e-6)  # the same labels as the single process
        assert {"drivable_share", "has_Car", "has_Pedestrian"} <= set(table.columns)
        with __import__("av").open(str(folder / "overlay.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == frames
        assert not list(folder.glob(".*partial*"))
    again = run_fleet(str(inputs), "--out", str(out), "--model", str(model))
    rerun = json.loads((out / "job.json").read_text())
    assert rerun["done"] == 0 and len(rerun["skipped"]) == 3 and rerun["frames"] == 0, again.stderr


def test_each_recording_gets_its_own_hood(tmp_path):
    # CamVid drive 0001TP shows its car's hood (3.2 % of the frame), the val drive does not:
    # the job finds the one and labels it EgoVehicle in every frame, and leaves the other alone.
    inputs = tmp_path / "archive"
    inputs.mkdir()
    write_camvid_video(inputs / "hood.mp4", 62, (480, 360), "train/0001TP_*.png", fps=10)
    write_camvid_video(inputs / "clear.mp4", 30, (480, 360))
    out = tmp_path / "out"
    result = run_fleet(str(inputs), "--out", str(out), "--no-video", "--actors", "1")
    assert result.returncode == 0, result.stderr
    assert "a hood in 1 of 2 videos" in result.stderr
    assert 0.025 <= json.loads((out / "hood" / "summary.json").read_text())["hood_share"] <= 0.045
    assert json.loads((out / "clear" / "summary.json").read_text())["hood_share"] == 0.0
    ego = pq.read_table(out / "hood" / "frames.parquet").to_pandas()["share_EgoVehicle"]
    assert (ego >= 0.025).all(), ego.min()


def test_no_videos_is_one_error_line(tmp_path):
    result = run_fleet(str(tmp_path), "--out", str(tmp_path / "o"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr


def test_masks_are_the_live_apps_labels_for_every_frame(tmp_path):
    from engines.frame_fit import content_labels, to_input
    from engines.labels import load_labels_file
    from realtime.render import upsample_labels

    model = contract_model(tmp_path / "tiny.onnx", size=(96, 128))
    video = write_video(tmp_path / "drive.mp4", 25, size=(256, 192))
    out = tmp_path / "out"
    result = run_fleet(str(video), "--out", str(out), "--model", str(model), "--chunk", "10",
                       "--masks", "--no-video", "--hood", "off")
    assert result.returncode == 0, result.stderr
    folder = out / "drive"
    assert json.loads((folder / "summary.json").read_text())["masks"] == "masks/"
    names = sorted(p.name for p in (folder / "masks").iterdir())
    assert names == ["classes.json", *[f"frame_{i:06d}.png" for i in range(25)]]
    assert not list(folder.glob(".*partial*"))
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    with engines.load(model) as engine:
        info = engine.info
        assert len(load_labels_file(folder / "masks" / "classes.json")["classes"]) == len(info.classes)
        for index in range(25):
            ok, image = capture.read()
            assert ok
            labels = engine.infer(to_input(image, info.input_size, info.resize)[None])[0]
            labels = content_labels(labels, image.shape[:2], info.input_size, info.resize)
            mask = cv2.imread(str(folder / "masks" / f"frame_{index:06d}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(mask, upsample_labels(labels, *image.shape[:2])), index


def test_unusable_out_folder_is_one_error_line(tmp_path):
    write_video(tmp_path / "a.mp4", 5, size=(128, 96))
    result = run_fleet(str(tmp_path / "a.mp4"), "--out", "/proc/segmented")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "--out" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_disk_full_stops_the_job_and_keeps_the_finished_videos(full_disk, tmp_path):
    if full_disk is None:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    model = contract_model(tmp_path / "tiny.onnx", size=(96, 128))
    inputs = tmp_path / "archive"
    inputs.mkdir()
    write_video(inputs / "a.mp4", 20, size=(256, 192))
    write_video(inputs / "b.mp4", 150, size=(640, 480), noise=True)  # its overlay fills 2 MB
    result = run_fleet(str(inputs), "--out", str(full_disk), "--model", str(model), "--chunk", "50")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "No space left on device" in errors[0] and "b.mp4" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    # The video finished first is complete; the broken one leaves nothing that looks complete.
    assert json.loads((full_disk / "a" / "summary.json").read_text())["frames"] == 20
    assert pq.read_table(full_disk / "a" / "frames.parquet").num_rows == 20
    assert sorted(p.name for p in (full_disk / "b").iterdir()) == []


@pytest.mark.parametrize("stop,status,said", [(signal.SIGINT, 130, "interrupted:"),
                                               (signal.SIGTERM, 143, "terminated:")],
                         ids=["ctrl-c", "SIGTERM"])
def test_a_stop_signal_keeps_the_finished_videos_and_the_rerun_does_the_rest(tmp_path, stop, status, said):
    model = contract_model(tmp_path / "tiny.onnx", size=(96, 128))
    inputs, out = tmp_path / "archive", tmp_path / "out"
    inputs.mkdir()
    # A short first video and long ones after it, so the interrupt lands while they are written.
    lengths = {"a": 20, "b": 120, "c": 120, "d": 120}
    for name, frames in lengths.items():
        write_video(inputs / f"{name}.mp4", frames, size=(320, 240))
    command = [sys.executable, "-m", "fleet", str(inputs), "--out", str(out), "--model", str(model),
               "--num-cpus", "2", "--quiet", "--chunk", "30"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    # Interrupt once the first video is complete, while others are still being written.
    deadline = time.monotonic() + 300
    while not list(out.glob("*/summary.json")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    # One line, not a traceback nor Ray's native stack dump ("*** SIGTERM received").
    assert "Traceback" not in stderr and "***" not in stderr and said in stderr, stderr
    finished = {path.parent.name for path in out.glob("*/summary.json")}
    assert finished and len(finished) < 4 and not list(out.glob("*/.*partial*")), sorted(out.rglob("*"))
    for name in finished:
        assert pq.read_table(out / name / "frames.parquet").num_rows == lengths[name]
    # The rerun skips what is complete and does the rest.
    rerun = run_fleet(str(inputs), "--out", str(out), "--model", str(model), "--chunk", "30")
    assert rerun.returncode == 0, rerun.stderr
    job = json.loads((out / "job.json").read_text())
    assert len(job["skipped"]) == len(finished) and job["done"] == 4 - len(finished)


def test_fsspec_urls_are_read(tmp_path):
    model = contract_model(tmp_path / "tiny.onnx", size=(96, 128))
    (tmp_path / "remote").mkdir()
    write_video(tmp_path / "remote" / "clip.mp4", 20, size=(256, 192))
    out = tmp_path / "out"
    result = run_fleet(f"file://{tmp_path}/remote/*.mp4", "--out", str(out), "--model", str(model),
                       "--no-video")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out / "clip" / "frames.parquet").to_pandas()
    assert list(table["frame"]) == list(range(20)) and table["video"][0].startswith("file://")
    classes = len(engines.load(model).info.classes)
    shares = table[[c for c in table.columns if c.startswith("share_")]].to_numpy()
    assert np.allclose(shares, shares_from_engine(model, tmp_path / "remote" / "clip.mp4", classes), atol=1e-6)
    assert not (out / "clip" / "overlay.mp4").exists()
