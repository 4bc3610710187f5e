"""Each bad input gets one clear line on stderr, a non-zero exit status, no traceback, no hang."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import REPO, contract_model, run_app


def assert_one_line_error(result, *fragments: str, status: int = 2) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_video(assets, tmp_path):
    result = run_app("--video", str(tmp_path / "nope.mp4"), "--model", str(assets["tiny"]), "--headless")
    assert_one_line_error(result, "does not exist", "--video")


def test_text_file_named_mp4(assets, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    result = run_app("--video", str(fake), "--model", str(assets["tiny"]), "--headless")
    assert_one_line_error(result, "could not be opened", "ffmpeg")


def test_video_with_zero_frames(assets, tmp_path):
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48)).release()
    result = run_app("--video", str(empty), "--model", str(assets["tiny"]), "--headless")
    assert_one_line_error(result, "no decodable frames")


def test_camera_that_does_not_open(assets):
    result = run_app("--camera", "97", "--model", str(assets["tiny"]), "--headless", timeout=60)
    assert_one_line_error(result, "camera 97 did not open")


def test_empty_glob(assets, tmp_path):
    result = run_app("--images", str(tmp_path / "*.png"), "--model", str(assets["tiny"]), "--headless")
    assert_one_line_error(result, "no images match", "quote the glob")


def test_corrupt_frame_mid_stream_is_skipped_and_counted(assets, tmp_path):
    for index in range(6):
        cv2.imwrite(str(tmp_path / f"f{index:03d}.png"), np.full((48, 64, 3), index * 40, np.uint8))
    (tmp_path / "f003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    summary = tmp_path / "s.json"
    result = run_app("--images", str(tmp_path / "*.png"), "--model", str(assets["tiny"]),
                     "--headless", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr
    report = json.loads(summary.read_text())
    assert report["frames"] == 5 and report["corrupt"] == 1


def test_all_frames_corrupt(assets, tmp_path):
    for index in range(3):
        (tmp_path / f"f{index}.png").write_bytes(b"not an image")
    result = run_app("--images", str(tmp_path / "*.png"), "--model", str(assets["tiny"]), "--headless")
    assert_one_line_error(result, "could be decoded", status=1)


def test_classifier_is_not_a_segmentation_model(assets):
    result = run_app("--video", str(assets["video"]), "--model", str(assets["classifier"]), "--headless")
    assert_one_line_error(result, "not a segmentation map", "[N, C, H, W]")


def test_missing_model(assets, tmp_path):
    result = run_app("--video", str(assets["video"]), "--model", str(tmp_path / "x.onnx"), "--headless")
    assert_one_line_error(result, "does not exist", "--model")


def test_unknown_model_name_lists_the_shipped_models(assets):
    result = run_app("--video", str(assets["video"]), "--model", "roadseg-huge", "--headless")
    assert_one_line_error(result, "does not exist", "roadseg")
    # A name that shipped once says what replaced it.
    result = run_app("--video", str(assets["video"]), "--model", "roadseg-small", "--headless")
    assert_one_line_error(result, "no longer ships", "--model roadseg-360x270")


def test_model_file_that_is_not_onnx(assets, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 100)
    result = run_app("--video", str(assets["video"]), "--model", str(junk), "--headless")
    assert_one_line_error(result, "not a loadable ONNX model")


def test_labels_file_that_does_not_match_the_model(assets, tmp_path):
    three = tmp_path / "three.json"
    three.write_text(json.dumps({"classes": [{"name": n} for n in ("road", "car", "sky")]}))
    result = run_app("--video", str(assets["video"]), "--model", str(assets["logits"]),
                     "--labels", str(three), "--headless")
    assert_one_line_error(result, "labels do not match the model", "4 classes")


def test_contract_model_with_wrong_labels_file(assets, tmp_path):
    three = tmp_path / "three.json"
    three.write_text(json.dumps({"classes": [{"name": n} for n in ("road", "car", "sky")]}))
    result = run_app("--video", str(assets["video"]), "--model", str(assets["tiny"]),
                     "--labels", str(three), "--headless")
    assert_one_line_error(result, "labels do not match the model", "11 classes")


def test_model_without_class_table_needs_labels(assets, tmp_path):
    bare = contract_model(tmp_path / "bare.onnx", with_metadata=False)
    result = run_app("--video", str(assets["video"]), "--model", str(bare), "--headless")
    assert_one_line_error(result, "no class table", "--labels")


def test_labels_file_that_is_not_json(assets, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = run_app("--video", str(assets["video"]), "--model", str(assets["logits"]),
                     "--labels", str(broken), "--headless")
    assert_one_line_error(result, "not valid JSON")


def test_save_into_missing_folder(assets, tmp_path):
    result = run_app("--video", str(assets["video"]), "--model", str(assets["tiny"]), "--headless",
                     "--save", str(tmp_path / "no" / "such" / "out.mp4"))
    assert_one_line_error(result, "does not exist", "--save")


@pytest.mark.parametrize("flag,value,fragment", [("--classes", "roads", "unknown entry"),
                                                 ("--alpha", "1.5", "outside 0..1")])
def test_bad_overlay_options(assets, flag, value, fragment):
    result = run_app("--video", str(assets["video"]), "--model", str(assets["tiny"]), "--headless",
                     flag, value)
    assert_one_line_error(result, fragment)


def test_precision_flag_with_onnx_runtime_points_to_calibration(assets):
    result = run_app("--video", str(assets["video"]), "--model", str(assets["tiny"]), "--headless",
                     "--precision", "int8")
    assert_one_line_error(result, "python -m calibration --precision int8", "--backend tensorrt")


def test_unknown_model_suffix(assets, tmp_path):
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"1234")
    result = run_app("--video", str(assets["video"]), "--model", str(weird), "--headless")
    assert_one_line_error(result, "unknown model type", ".onnx")


def test_parallel_workers_need_a_thread_safe_backend(tmp_path):
    from realtime.cli import inference_threads
    from engines.base import EngineError

    assert inference_threads("onnxruntime", "realtime", None, None)[0] == 1
    assert inference_threads("onnxruntime", "all", 1, 4) == (1, 4)
    with pytest.raises(EngineError, match="--workers 1"):
        inference_threads("tensorrt", "all", 2, None)


@pytest.mark.parametrize("module,args,fragment", [
    ("realtime.bench", ["--video", "{tmp}/nope.mp4"], "does not exist"),
    ("training.train", ["--data", "{tmp}/nope", "--epochs", "1", "--out", "{tmp}/o"], "not found"),
    ("training.train", ["--resume", "{tmp}/nope.pt", "--out", "{tmp}/o"], "no such checkpoint"),
    ("training.train", ["--dashboard", "30", "--out", "{tmp}/o"], "--dashboard 30.0: a share"),
    ("training.train", ["--label-smoothing", "1", "--out", "{tmp}/o"], "--label-smoothing 1.0"),
    ("training.train", ["--jitter", "-1", "--out", "{tmp}/o"], "--jitter -1.0: a strength"),
    ("training.export", ["--checkpoint", "engines/models/roadseg.onnx", "--out", "{tmp}/x.onnx"],
     "not a checkpoint written by training.train"),
    ("calibration", ["--onnx", "engines/models/roadseg.onnx", "--precision", "fp16", "--out",
                     "{tmp}/missing/x.onnx"], "--out"),
], ids=["bench-video", "train-data", "train-resume", "train-share", "train-smoothing", "train-jitter",
     "export-onnx-as-checkpoint", "calibration-out"])
def test_tools_answer_bad_input_with_one_line(tmp_path, module, args, fragment):
    if module.startswith("training.train") or module == "training.export":
        pytest.importorskip("torch", reason="the train extra is not installed")
    result = subprocess.run([sys.executable, "-m", module, *(a.format(tmp=tmp_path) for a in args)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], output
    assert "Traceback" not in output


def test_ctrl_c_stops_a_tool_with_one_line_and_its_child_run(tmp_path):
    # The soak test runs the app as a child that loops forever: Ctrl-C must end both.
    process = subprocess.Popen([sys.executable, "-m", "realtime.soak", "--minutes", "10",
                                "--every", "0.5"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()  # the first RSS sample: the child app is running
    assert "RSS" in first, process.communicate()[1]
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)"
    assert children and all(not Path(f"/proc/{pid}").exists() for pid in children)
