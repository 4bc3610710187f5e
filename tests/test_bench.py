"""The benchmark runs end to end on a tiny model and a short generated video (no speed checks)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime import bench, clip
from realtime.telemetry import RunRecorder, name_os_thread
from helpers import camvid_or_skip


def test_bench_writes_json_table_and_chart(assets, tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib ([train] extra)")
    out = tmp_path / "bench.json"
    args = bench.parse_args(["--video", str(assets["video"]), "--model", str(assets["tiny"]),
                             "--runs", "20", "--warmup", "2", "--frames", "20", "--json", str(out),
                             "--backend", "onnxruntime", "--backend", "openvino",
                             "--pipeline-runs", "2"])
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    # One row per runtime asked for, measured in the same run.
    assert [row["backend"] for row in report["results"]] == ["onnxruntime", "openvino"]
    row = report["results"][0]
    for key in ("engine_fps", "pipeline_fps", "naive_fps", "decode_fps"):
        assert row[key] > 0, key
    assert row["pipeline_frames"] == row["naive_frames"] == 20
    # Two pipeline runs, the slower of the two (the lower median) reported.
    assert len(row["pipeline_fps_runs"]) == 2 and row["pipeline_fps"] == min(row["pipeline_fps_runs"])
    assert row["engine_runs"] == 20 and row["engine_ms_p95"] >= row["engine_ms_p50"]
    assert set(row["pipeline_stages_ms"]) >= {"decode", "infer", "render", "write", "latency"}
    assert set(row["pipeline_stage_cpu_ms"]) == {"decode_cpu", "resize_cpu", "render_cpu", "write_cpu"}
    assert row["cpu_ms_per_frame"] > row["engine_1thread_ms"] > 0 and 0 < row["pipeline_vs_bound"]
    # The stages alone measured before and after the pipeline runs; the bound takes the means.
    assert row["engine_1thread_ms"] == pytest.approx(np.mean(row["engine_1thread_ms_before_after"]))
    decode_ms = np.mean(row["decode_cpu_ms_before_after"])
    assert row["cpu_ms_per_frame"] == pytest.approx(
        sum(v for k, v in row["pipeline_stage_cpu_ms"].items() if k != "decode_cpu") + decode_ms
        + row["engine_1thread_ms"])
    assert row["pipeline_process_cpu_ms_per_frame"] > 0 and 0 < row["pipeline_cpu_utilisation"]
    assert row["pipeline_steady_fps"] > 0 and 0 < row["pipeline_steady_cpu_utilisation"]
    assert row["pipeline_steady_vs_bound"] == pytest.approx(row["pipeline_steady_fps"] / row["bound_fps"])
    assert out.with_suffix(".md").read_text().startswith("| model |")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_clip_plays_camvid_back_and_forth(tmp_path, capsys):
    images = sorted(camvid_or_skip().glob("val/*.png"))[:5]
    out = tmp_path / "clip.mp4"
    assert clip.main(clip.parse_args([str(tmp_path / "none"), "--out", str(out)])) == 2
    assert "no images found" in capsys.readouterr().out
    folder = tmp_path / "frames"
    folder.mkdir()
    for image in images:
        (folder / image.name).symlink_to(image)
    assert clip.main(clip.parse_args([str(folder), "--out", str(out), "--size", "320", "240",
                                      "--frames", "12"])) == 0
    assert "12 frames, 320x240" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "frames"]  # no partial file left
    # Forward, backward without repeating the turning frame, forward again: 0 1 2 3 4 3 2 1 0 1 2 3.
    expected = [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]
    references = [cv2.resize(cv2.imread(str(p)), (320, 240), interpolation=cv2.INTER_AREA).astype(np.float32)
                  for p in images]
    capture = cv2.VideoCapture(str(out), cv2.CAP_FFMPEG)
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(int(np.argmin([np.abs(frame - ref).mean() for ref in references])))
    capture.release()
    assert decoded == expected
    # An output in a folder that does not exist is refused before any work.
    assert clip.main(clip.parse_args([str(folder), "--out", str(tmp_path / "no" / "c.mp4")])) == 2
    assert "does not exist" in capsys.readouterr().out


def test_benchmark_clip_on_a_full_disk_is_an_error_and_leaves_nothing(full_disk, capsys):
    if full_disk is None:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    out = full_disk / "clip.mp4"
    status = clip.main(clip.parse_args([str(camvid_or_skip() / "val"), "--out", str(out),
                                        "--frames", "30", "--crf", "0"]))  # lossless: > 2 MB
    assert status == 1
    assert "writing failed" in capsys.readouterr().out
    assert list(full_disk.iterdir()) == []  # neither the clip nor its partial file


def test_steady_state_leaves_out_filling_and_draining():
    # 100 outputs: the first ten 50 ms apart (queues filling), the middle 10 ms apart with 15 ms
    # of process CPU each, the last ten 1 ms apart (a drain that no longer decodes).
    recorder = RunRecorder()
    gaps = [0.05] * 10 + [0.01] * 80 + [0.001] * 10
    now = cpu = 0.0
    for gap in gaps:
        now, cpu = now + gap, cpu + (0.015 if gap == 0.01 else gap)
        recorder.output_times.append(now)
        recorder.output_cpu.append(cpu)
    recorder.frames = len(gaps)
    steady = recorder.steady_state()
    assert steady["steady_fps"] == pytest.approx(100.0)
    assert steady["steady_process_cpu_ms_per_frame"] == pytest.approx(15.0)
    recorder.frames = 19
    assert recorder.steady_state()["steady_fps"] is None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread CPU is read from Linux's /proc")
def test_threads_cpu_names_the_threads_that_spent_it():
    # A named thread spins through the whole run; another spins for a while and ends inside the
    # steady window; the recording (main) thread mostly sleeps.
    recorder, stop = RunRecorder(), threading.Event()

    def spin(name: str, cpu_seconds: float, until: threading.Event = stop) -> None:
        name_os_thread(name)
        while not until.is_set() and time.thread_time() < cpu_seconds:
            sum(range(1000))

    spinner = threading.Thread(target=spin, args=("rs-spinner", 60.0), daemon=True)
    spinner.start()
    # One that lives across several samples (taken every 16 outputs) and ends inside the
    # window, as FFmpeg's decoder threads do when a looped file is reopened.
    passing, passing_stop = None, threading.Event()
    for output in range(200):
        if output == 60:  # inside the window of samples (outputs 32-176 here)
            brief = threading.Thread(target=spin, args=("rs-brief", 0.3))
            brief.start()
            brief.join()
        if output == 70:
            passing = threading.Thread(target=spin, args=("av:h264:df1", 60.0, passing_stop))
            passing.start()
        if output == 120:
            passing_stop.set()
            passing.join()
        time.sleep(0.002)
        recorder.add({})
    stop.set()
    spinner.join()
    account = recorder.threads_cpu()
    threads = account["threads_cpu_ms_per_frame"]
    assert account["threads_window"] == [32, 176]
    # The spinner had a core's share of every interval; the sleeping main thread hardly any.
    assert threads["rs-spinner"] > 5 * threads["main"]
    # The brief thread is gone by the end of the window: its 300 CPU ms show as ended threads,
    # with what the passing thread spent after its last sample (each sample reads the process's
    # CPU with the threads', so only a running thread's last tick, a few ms, is unaccounted).
    assert "rs-brief" not in threads
    assert threads["ended threads"] * 144 > 290
    # The thread that spun across samples (outputs 70-120) is reported under its role, though
    # it has ended: at least the CPU seen from its start to its last sample (outputs 80-112).
    assert threads["av:h264:df"] * 144 > 20
    # Live threads and ended ones add up to the process's CPU over the same outputs.
    assert sum(threads.values()) == pytest.approx(account["threads_window_process_cpu_ms_per_frame"],
                                                  rel=0.02)
    # A long run keeps a bounded number of samples, evenly spaced.
    long = RunRecorder()
    for _ in range(20000):
        long.add({})
    indices = [index for index, _, _ in long.thread_samples]
    assert len(indices) <= 129 and len(set(np.diff(indices))) == 1
    assert long.threads_cpu()["threads_window"][0] <= 0.1 * 20000 + indices[1]
    # Too short a run for two samples inside its steady window reports nothing.
    short = RunRecorder()
    for _ in range(20):
        short.add({})
    assert short.threads_cpu() == {}
