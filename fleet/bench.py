"""Benchmark the fleet job against the single-process app on the same videos.

    python -m fleet.bench VIDEO... --json fleet_bench.json

Runs, on this machine: `run.py --pace all --headless --save` once per video, one after the
other (how one process covers an archive); then `python -m fleet` with 1 and with 2 actors
(one CPU thread each), each into a fresh output folder. Both write the overlaid H.264 video.
Prints frames/s of each and the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engines.tool import run_tool
from realtime.bench import BenchError, run_reporting_errors

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def run_step(command: list[str]) -> None:
    """Run one measured command; a failure is a BenchError carrying its `error:` line."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        reason = ([line for line in lines if line.startswith("error:")] or lines)[-1]
        raise BenchError(f"{' '.join(command[1:3])} ... failed: {reason.removeprefix('error: ')}")


def main(args: argparse.Namespace) -> int:
    """Measure both ways."""
    return run_reporting_errors(benchmark, args)


def benchmark(args: argparse.Namespace) -> int:
    frames = 0
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        for index, video in enumerate(args.videos):
            summary = Path(scratch) / f"s{index}.json"
            run_step([sys.executable, str(RUN_PY), str(video), "--pace", "all", "--headless",
                      "--quiet", "--save", f"{scratch}/o{index}.mp4", "--summary-json", str(summary)])
            frames += json.loads(summary.read_text())["frames"]
        single = frames / (time.perf_counter() - started)
        print(f"run.py, one process per video: {frames} frames, {single:.1f} frames/s", flush=True)
        rows = {"frames": frames, "single_process_fps": single}
        for actors in args.actors:
            out = Path(scratch) / f"fleet{actors}"
            started = time.perf_counter()
            run_step([sys.executable, "-m", "fleet", *map(str, args.videos), "--out", str(out),
                      "--actors", str(actors), "--threads", "1", "--quiet"])
            wall = time.perf_counter() - started
            job = json.loads((out / "job.json").read_text())
            rows[f"fleet_{actors}_actors_fps"] = job["frames"] / wall
            print(f"fleet, {actors} actor(s): {job['frames']} frames, {job['frames'] / wall:.1f} frames/s "
                  f"(job's own figure without start-up {job['fps']:.1f}), "
                  f"{job['frames'] / wall / single:.2f}x the single process", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
