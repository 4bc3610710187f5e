"""Benchmark the outputs: pipeline FPS with each combination of sinks, the web view's
first-frame latency, and the CPU cost of the H.264 encoder against OpenCV's MPEG-4 Part 2.

    python -m realtime.bench_io --video drive540.mp4 --json io.json
    python -m realtime.bench_io --images "../shared/data/camvid/val/*.png" --json io_camvid.json

Each configuration is `run.py --pace all` in its own process, as a user runs it (headless
unless the configuration is the window's, with --window);
web viewers are real HTTP clients reading /stream.mjpg while the run lasts.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.tool import run_tool
from realtime.bench import BenchError, run_reporting_errors
from realtime.sinks import VideoSink

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def viewer(url: str, stop: threading.Event, counts: list[int], first: list[float]) -> None:
    """Read MJPEG until stopped, counting JPEGs; records the seconds to the first one."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            while not stop.is_set():
                chunk = response.read1(65536)
                if not chunk:
                    return
                found = chunk.count(b"\xff\xd9")
                if found and not first:
                    first.append(time.monotonic() - started)
                counts[0] += found
    except OSError:
        return  # the run ended and the server went away


def run_config(input_args: list[str], outputs: list[str], viewers: int, scratch: Path) -> dict[str, Any]:
    """One pipeline run; returns its FPS and, with viewers, what they received."""
    summary = scratch / "summary.json"
    shown = "--show" in outputs
    command = [sys.executable, str(RUN_PY), *input_args, "--pace", "all",
               *([] if shown else ["--headless"]), "--summary-json", str(summary), *outputs]
    if viewers:
        command += ["--serve", "127.0.0.1:0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    stop, threads, counts, firsts = threading.Event(), [], [], []
    if viewers:
        url = None
        while url is None:
            line = process.stderr.readline()
            if not line:
                raise BenchError(f"the run did not start serving: {process.stderr.read()}")
            found = re.search(r"serving the live view on (http://\S+)", line)
            url = found.group(1) if found else None
        for _ in range(viewers):
            counts.append([0])
            firsts.append([])
            threads.append(threading.Thread(target=viewer, args=(url + "stream.mjpg", stop,
                                                                 counts[-1], firsts[-1]), daemon=True))
            threads[-1].start()
    _, stderr = process.communicate()
    stop.set()
    if process.returncode != 0:
        raise BenchError(f"the run failed: {stderr}")
    report = json.loads(summary.read_text())
    row = {"outputs": " ".join(outputs) or "none", "viewers": viewers, "fps": report["fps"],
           "frames": report["frames"]}
    if viewers:
        row["viewer_frames"] = [c[0] for c in counts]
        row["first_frame_s"] = [round(f[0], 3) if f else None for f in firsts]
    return row


def encoder_cost(frames: list[np.ndarray], scratch: Path) -> dict[str, float]:
    """CPU ms per frame (the whole process, which does nothing else meanwhile, so encoder
    threads count too) writing the same frames with each encoder."""
    costs = {}
    for name, path in (("h264 (PyAV, fragmented MP4)", scratch / "e.mp4"),
                       ("mpeg4 part 2 (OpenCV mp4v)", scratch / "e_cv.mp4")):
        height, width = frames[0].shape[:2]
        writer = (cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
                  if "OpenCV" in name else VideoSink(path, 30.0))
        write = writer.write if "OpenCV" in name else writer.write_frame
        write(frames[0])  # opens the encoder
        started = time.process_time()
        for frame in frames[1:]:
            write(frame)
        costs[name] = (time.process_time() - started) * 1000 / (len(frames) - 1)
        writer.release() if "OpenCV" in name else writer.close()
        costs[f"{name} file MB"] = path.stat().st_size / 1e6
    return costs


def main(args: argparse.Namespace) -> int:
    """Run every output configuration."""
    return run_reporting_errors(benchmark, args)


def benchmark(args: argparse.Namespace) -> int:
    input_args = ["--video", str(args.video)] if args.video else ["--images", args.images]
    if args.max_frames:
        input_args += ["--max-frames", str(args.max_frames)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        window = [(["--show"], 0), (["--show", f"--save={scratch}/o.mp4"], 0)] if args.window else []
        configs = [*window, ([], 0), ([f"--save={scratch}/o.mp4"], 0), ([f"--save={scratch}/o.avi"], 0),
                   ([f"--save={scratch}/o.mp4", f"--metrics={scratch}/m.jsonl"], 1),
                   ([f"--save={scratch}/o.mp4", f"--metrics={scratch}/m.jsonl"], 2)]
        for outputs, viewers in configs:
            rows.append(run_config(input_args, outputs, viewers, scratch))
            print(json.dumps(rows[-1]).replace(scratch_name, "TMP"), flush=True)
        capture = cv2.VideoCapture(str(args.video)) if args.video else None
        frames = []
        if capture is not None:
            while len(frames) < 150:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
        else:
            import glob
            frames = [cv2.imread(p) for p in sorted(glob.glob(args.images))[:150]]
        costs = encoder_cost(frames, scratch)
    for row in rows:
        row["outputs"] = row["outputs"].replace(scratch_name, "TMP")
    print(json.dumps(costs, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "encoder_cpu_ms_per_frame": costs,
                                         "frame_size": list(frames[0].shape[1::-1])}, indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path)
    source.add_argument("--images")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--window", action="store_true",
                        help="also runs with the window (needs a display; Xvfb works)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
