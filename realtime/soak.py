"""Soak test: run the real application for minutes on a looping video and watch its memory.

    python -m realtime.soak --minutes 5 --video drive.mp4     # default: a generated 960x540 clip

It starts `run.py --loop --pace realtime --headless --save ... --metrics ...` as a user would,
samples the process's resident memory every --every seconds, prints the series, and at the end
checks that every frame it processed was written. Exit 1 when RSS grew by more than --max-growth
MB between the first sample after warm-up and the last, or when frames went missing.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from engines.tool import run_tool

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc), None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def write_clip(path: Path, frames: int = 300, size: tuple[int, int] = (960, 540)) -> Path:
    """A moving synthetic street scene, so decode, inference and encode all do real work."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    rng = np.random.default_rng(0)
    for index in range(frames):
        image = np.full((height, width, 3), (200, 170, 120), np.uint8)
        cv2.fillPoly(image, [np.array([[0, height], [width, height], [width * 3 // 5, height // 2],
                                       [width * 2 // 5, height // 2]], np.int32)], (90, 90, 90))
        x = (index * 9) % (width - 80)
        cv2.rectangle(image, (x, height * 2 // 3), (x + 80, height * 2 // 3 + 50), (30, 30, 200), -1)
        writer.write(cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8)))
    writer.release()
    return path


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        video = args.video or write_clip(scratch_dir / "clip.mp4")
        out, metrics, summary = (scratch_dir / "soak.mp4", scratch_dir / "soak.jsonl",
                                 scratch_dir / "summary.json")
        command = [sys.executable, str(RUN_PY), "--video", str(video), "--loop", "--pace",
                   "realtime", "--headless", "--save", str(out), "--metrics", str(metrics),
                   "--summary-json", str(summary), "--quiet"]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        series: list[tuple[float, float]] = []
        started = time.monotonic()
        # Sample RSS until the time is up (or the app stops by itself, which is a failure).
        try:
            while time.monotonic() - started < args.minutes * 60 and process.poll() is None:
                time.sleep(args.every)
                value = rss_mb(process.pid)
                if value is not None:
                    series.append((time.monotonic() - started, value))
                    print(f"{series[-1][0]:6.0f} s  RSS {value:6.1f} MB", flush=True)
        except KeyboardInterrupt:
            # Stopped early: the app must not outlive the soak (it loops forever).
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)
            raise
        if process.poll() is not None:
            print(f"error: the app stopped early:\n{process.stderr.read()}", file=sys.stderr)
            return 1
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        if not summary.exists():
            print(f"error: the app wrote no summary (exit {process.returncode}):\n{stderr}",
                  file=sys.stderr)
            return 1
        report = json.loads(summary.read_text())
        written = len(metrics.read_text().splitlines())
        warm = [value for seconds, value in series if seconds >= args.warmup]
        growth = warm[-1] - warm[0] if len(warm) >= 2 else 0.0
        with __import__("av").open(str(out)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        result = {"minutes": args.minutes, "rss_series_mb": [round(v, 1) for _, v in series],
                  "rss_growth_mb": round(growth, 1), "frames": report["frames"],
                  "dropped": report["dropped"], "metrics_lines": written, "video_frames": decoded,
                  "exit_status": process.returncode}
        print(json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        ok = growth <= args.max_growth and report["frames"] == written == decoded
        if not ok:
            print(f"error: RSS grew {growth:.1f} MB (limit {args.max_growth}) or frames went "
                  f"missing (processed {report['frames']}, metrics {written}, video {decoded})",
                  file=sys.stderr)
        return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before growth counts")
    parser.add_argument("--max-growth", type=float, default=20.0, help="MB")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.minutes > 0 and args.every > 0):
        parser.error("--minutes and --every must be above 0")
    return args


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
