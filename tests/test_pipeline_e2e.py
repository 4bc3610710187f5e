"""End-to-end runs of `python run.py` on real videos, real ONNX models and ONNX Runtime."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import engines
from engines.autoselect import int8_may_saturate
from helpers import REPO, camvid_or_skip, count_video_frames, run_app, write_video


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_video_pace_all_frames_in_equal_frames_out(assets, tmp_path, workers):
    # With two inference threads frames finish out of order; they must be written in order.
    out, metrics, summary = tmp_path / "out.mp4", tmp_path / "m.jsonl", tmp_path / "s.json"
    result = run_app("--video", str(assets["video"]), "--model", str(assets["tiny"]), "--pace", "all",
                     "--headless", "--save", str(out), "--metrics", str(metrics),
                     "--summary-json", str(summary), "--workers", workers)
    assert result.returncode == 0, result.stderr
    frames_in, size_in = count_video_frames(assets["video"])
    frames_out, size_out = count_video_frames(out)
    records = read_metrics(metrics)
    assert frames_in == frames_out == len(records) == 40
    assert size_out == size_in
    assert [r["index"] for r in records] == list(range(40))
    assert all(r["dropped"] == 0 and r["latency_ms"] > 0 and r["infer_ms"] > 0 for r in records)
    report = json.loads(summary.read_text())
    assert report["frames"] == 40 and report["dropped"] == 0
    assert report["stop_reason"] == "end of input"
    assert "end-to-end" in result.stderr and "p95" in result.stderr
    # Where the CPU went, by thread, over the steady state (Linux reports each thread's CPU;
    # the capture and inference threads of so short a video may have ended before its end).
    if sys.platform.startswith("linux"):
        threads = report["threads_cpu_ms_per_frame"]
        assert threads["rs-render"] > 0 and threads["rs-output"] > 0 and "ended threads" in threads
        assert "CPU ms a frame by thread" in result.stderr


def test_camvid_clip_with_shipped_model(tmp_path):
    camvid = camvid_or_skip()
    out, metrics = tmp_path / "camvid.mkv", tmp_path / "m.jsonl"
    result = run_app("--images", str(camvid / "val" / "*.png"), "--pace", "all", "--headless",
                     "--save", str(out), "--metrics", str(metrics))
    assert result.returncode == 0, result.stderr
    frames_in = len(list((camvid / "val").glob("*.png")))
    frames_out, size = count_video_frames(out)
    assert frames_in == frames_out == len(read_metrics(metrics)) == 101
    assert size == (480, 360)
    # --backend auto says at start-up which runtime and precision run (the fastest installed).
    chosen = engines.choose(engines.DEFAULT_MODEL)
    backend = chosen.backend
    with engines.load(chosen.path, backend, precision=chosen.precision) as engine:
        precision = engine.info.precision
    assert f"running {backend} {precision} 480x360" in result.stderr
    assert f"{backend} {precision} 480x360" in result.stderr.splitlines()[-1] or \
        f"{backend} {precision} 480x360 on" in result.stderr


@pytest.mark.parametrize("name", engines.shipped_models())
def test_every_shipped_model_runs_by_name(assets, tmp_path, name):
    # Users pick a shipped model with --model NAME; each must be a trained contract model, and
    # its name must say what it is (its network; test-time augmentation; an input size other
    # than CamVid's 480x360, as WIDTHxHEIGHT). RoadSegNet-base trained 1000 epochs and more from
    # scratch; RoadSegNet-lite0 starts from ImageNet and says so.
    info = engines.load(name).info
    provenance = info.details["provenance"]
    if "lite0" in name:
        assert provenance["model_size"] == "lite0" and provenance["recipe"]["pretrained"] == "imagenet"
    else:
        assert provenance["epochs"] >= 1000 and provenance["model_size"] == "base"
    assert ("test_time_augmentation" in provenance) == name.startswith("roadseg-tta")
    named_size = re.search(r"-(\d+)x(\d+)", name)
    width, height = map(int, named_size.groups()) if named_size else (480, 360)
    assert info.input_size == (height, width)
    summary = tmp_path / "s.json"
    # ONNX Runtime: auto's first timing of every runtime is tested elsewhere, and costs seconds.
    result = run_app("--video", str(assets["video"]), "--model", name, "--headless",
                     "--backend", "onnxruntime", "--max-frames", "10", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr
    assert json.loads(summary.read_text())["frames"] == 10


def test_int8_run_says_when_the_cpu_lacks_vnni(assets):
    # The shipped INT8 sibling run on purpose: on a CPU without VNNI its kernels can saturate,
    # and the user is told so once at start-up (and only there).
    result = run_app("--video", str(assets["video"]), "--model", "roadseg.int8", "--backend",
                     "onnxruntime", "--headless", "--max-frames", "3")
    assert result.returncode == 0, result.stderr
    assert "running onnxruntime int8" in result.stderr
    assert ("note: this CPU has no VNNI" in result.stderr) == int8_may_saturate()


def test_user_logits_model_with_labels_file(assets, tmp_path):
    metrics = tmp_path / "m.jsonl"
    result = run_app("--video", str(assets["video"]), "--model", str(assets["logits"]),
                     "--labels", str(assets["labels4"]), "--headless", "--max-frames", "10",
                     "--classes", "all", "--metrics", str(metrics))
    assert result.returncode == 0, result.stderr
    assert len(read_metrics(metrics)) == 10


def test_realtime_pace_drops_stale_frames_and_reports_them(tmp_path):
    # A 300 FPS source and the shipped model (tens of ms a frame on a CPU): most frames must
    # be dropped at the mailbox, and every frame is either processed or counted as dropped.
    video = write_video(tmp_path / "fast.mp4", 150, size=(320, 240), fps=300)
    metrics, summary = tmp_path / "m.jsonl", tmp_path / "s.json"
    result = run_app("--video", str(video), "--pace", "realtime", "--headless",
                     "--metrics", str(metrics), "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr
    report = json.loads(summary.read_text())
    records = read_metrics(metrics)
    assert report["dropped"] > 0
    assert report["frames"] == len(records)
    assert report["frames"] + report["dropped"] == 150
    drops = [r["dropped"] for r in records]
    assert drops == sorted(drops) and drops[-1] > 0
    # No queueing behind stale frames: a frame waits at most about one inference.
    waits = sorted(r["wait_ms"] for r in records)
    infers = sorted(r["infer_ms"] for r in records)
    assert waits[len(waits) // 2] < 3 * infers[len(infers) // 2] + 20


def _start_and_wait_for_frames(args: list[str], metrics: Path, frames: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= frames:
            return process
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run produced no frames in 60 s")


def _stop_and_check(process: subprocess.Popen, sig: int, expected_status: int, out: Path,
                    metrics: Path) -> None:
    sent = time.monotonic()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=10)
    elapsed = time.monotonic() - sent
    assert process.returncode == expected_status, stderr
    # The run loops forever, so any bound shows the signal was honoured; 3 s leaves room for
    # the encoder flush on a slow shared host.
    assert elapsed < 3.0, f"took {elapsed:.2f} s to stop"
    frames, _ = count_video_frames(out)
    assert frames > 0 and frames == len(read_metrics(metrics))


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "ctrl-c"])
def test_signal_stops_promptly_and_keeps_a_playable_video(assets, tmp_path, sig, status):
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.jsonl"
    process = _start_and_wait_for_frames(
        ["--video", str(assets["video"]), "--model", str(assets["tiny"]), "--loop", "--pace",
         "realtime", "--headless", "--save", str(out), "--metrics", str(metrics)], metrics, 10)
    _stop_and_check(process, sig, status, out, metrics)


def test_hard_kill_leaves_a_playable_mkv(assets, tmp_path):
    # The muxer writes in blocks, so run long enough for several to reach the disk.
    out, metrics = tmp_path / "out.mkv", tmp_path / "m.jsonl"
    process = _start_and_wait_for_frames(
        ["--video", str(assets["video"]), "--model", str(assets["tiny"]), "--loop", "--pace",
         "all", "--headless", "--save", str(out), "--metrics", str(metrics)], metrics, 300)
    process.kill()
    process.communicate(timeout=10)
    frames, size = count_video_frames(out)
    assert frames > 0 and size == (320, 240)
    if os.name == "posix":
        assert process.returncode == -signal.SIGKILL


def test_camera_that_stops_delivering_is_reopened(assets, tmp_path):
    # OpenCV opens a file path as a capture device too: at its end the "camera" stops
    # delivering, and the source must reopen it with back-off while the run goes on.
    summary = tmp_path / "s.json"
    result = run_app("--camera", str(assets["video"]), "--model", str(assets["tiny"]), "--headless",
                     "--pace", "all", "--max-frames", "70", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr
    report = json.loads(summary.read_text())
    assert report["frames"] == 70 and report["reopened"] >= 1


def test_second_inference_thread_only_when_the_engine_is_not_clearly_smaller(assets):
    from realtime.cli import engine_is_clearly_smaller

    # A tiny model against the overlay and encode of a 960x540 frame: one thread is enough.
    with engines.load(assets["tiny"], "onnxruntime", threads=1) as tiny:
        assert engine_is_clearly_smaller(tiny, (540, 960))
    # The default model against a thumbnail's stages: inference needs both threads.
    with engines.load(engines.DEFAULT_MODEL, "onnxruntime", threads=1) as default:
        assert not engine_is_clearly_smaller(default, (60, 80))


def test_saved_masks_are_the_engines_class_ids_at_each_frames_size(tmp_path):
    from engines.frame_fit import content_labels, to_input
    from engines.labels import load_labels_file
    from realtime.render import upsample_labels

    camvid = camvid_or_skip()
    folder = tmp_path / "frames"
    folder.mkdir()
    # Two CamVid frames as they are (the model's input size) and one at twice the size.
    paths = sorted((camvid / "val").glob("*.png"))[:3]
    for index, path in enumerate(paths):
        image = cv2.imread(str(path))
        if index == 2:
            image = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / path.name), image)
    masks = tmp_path / "masks"
    result = run_app("--images", str(folder), "--headless", "--backend", "onnxruntime",
                     "--hood", "off", "--save-masks", str(masks))
    assert result.returncode == 0, result.stderr
    with engines.load(engines.DEFAULT_MODEL, "onnxruntime") as engine:
        info = engine.info
        assert [c.name for c in load_labels_file(masks / "classes.json")["classes"]] == \
            [c.name for c in info.classes]
        for path in paths:
            frame = cv2.imread(str(folder / path.name))
            mask = cv2.imread(str(masks / path.name), cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint8 and mask.shape == frame.shape[:2]
            labels = engine.infer(to_input(frame, info.input_size, info.resize)[None])[0]
            labels = content_labels(labels, frame.shape[:2], info.input_size, info.resize)
            expected = upsample_labels(labels, *frame.shape[:2])
            assert (mask == expected).mean() > 0.999
            assert mask.max() < len(info.classes)


def test_masks_into_the_overlay_folder_are_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((48, 64, 3), np.uint8))
    result = run_app("--images", str(tmp_path / "*.png"), "--headless", "--save",
                     f"{tmp_path}/out/", "--save-masks", f"{tmp_path}/out")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "--save-masks" in errors[0], result.stderr


def test_masks_a_run_saved_score_as_the_engine_does(tmp_path, capsys):
    from engines.camvid import CamVid
    from engines.metrics import evaluate_engine
    from training import evaluate

    camvid = camvid_or_skip()
    frames = tmp_path / "val"
    frames.mkdir()
    for path in sorted((camvid / "val").glob("*.png"))[:12]:
        (frames / path.name).symlink_to(path)
    masks = tmp_path / "masks"
    result = run_app("--images", str(frames), "--headless", "--backend", "onnxruntime",
                     "--hood", "off", "--save-masks", str(masks))
    assert result.returncode == 0, result.stderr
    report = tmp_path / "masks.json"
    args = evaluate.parse_args(["--masks", str(masks), "--data", str(camvid), "--split", "val",
                                "--json", str(report)])
    assert evaluate.main(args) == 0
    from_masks = json.loads(report.read_text())
    dataset = CamVid(camvid, "val")
    with engines.load(engines.DEFAULT_MODEL, "onnxruntime") as engine:
        direct = evaluate_engine(engine, dataset.load_images(12), dataset.load_labels(12))
    assert from_masks["frames"] == 12
    assert from_masks["mean_iou"] == pytest.approx(direct["mean_iou"], abs=1e-4)
    assert from_masks["per_class_iou"]["Road"] == pytest.approx(direct["per_class_iou"]["Road"], abs=1e-4)
