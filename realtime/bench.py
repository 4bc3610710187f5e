"""Benchmark: bare engine vs the full threaded pipeline vs a naive single-threaded loop.

    python -m realtime.bench --video drive.mp4 --json bench.json
    python -m realtime.bench --images "../shared/data/camvid/val/*.png" --json camvid.json
    python -m realtime.bench --video drive.mp4 --model a.onnx --model runs/base/best.pt
    python -m realtime.bench --video drive.mp4 --backend onnxruntime --backend auto

For each model (backend chosen by suffix, or --backend) it measures, in one run:
- engine: warm-up, then median and p95 latency over --runs calls on the video's frames;
- pipeline: `run.py --pace all --headless --save` on the video, end-to-end FPS, per-stage ms,
  peak RSS (a separate process, exactly as a user runs it; the median of --pipeline-runs runs);
- naive: read → infer → overlay → write in one thread, the way most demos are written;
- the machine bound: the CPU milliseconds one frame costs in every stage (decode measured on
  its own with its decoder threads; resize, overlay and encode as the pipeline measured them on
  their threads; the engine timed single-threaded), and `cores × 1000 / sum` frames per
  second, the most any arrangement of those stages could reach on this machine; the
  pipeline's FPS is reported as a share of it, and of the bound from the whole process's CPU.
Ratios (pipeline/engine, pipeline/naive, pipeline/bound) come from the same run, so machine
noise cancels.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

import engines
from engines.base import Engine, EngineError
from engines.frame_fit import content_labels, to_input
from engines.tool import run_tool
from realtime.render import Palette, overlay, parse_class_selection
from realtime.sources import Source, SourceError, open_source
from realtime.telemetry import CPU_STAGES, format_threads_cpu, keep_frame_memory

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def input_args(args: argparse.Namespace) -> list[str]:
    """The run.py input option for the benchmark's source."""
    return ["--video", str(args.video)] if args.video else ["--images", str(args.images)]


def open_input(args: argparse.Namespace) -> Source:
    return open_source(video=str(args.video) if args.video else None,
                       images=str(args.images) if args.images else None)


def read_frames(args: argparse.Namespace) -> list[np.ndarray]:
    """Decode the input once into memory (so the engine benchmark excludes decode)."""
    source = open_input(args)
    frames = list(itertools.islice(source.frames(threading.Event()), args.frames))
    source.close()
    return frames


def bench_engine(engine: Engine, frames: list[np.ndarray], runs: int, warmup: int) -> dict[str, Any]:
    """Median and p95 of engine.infer on batch-1 frames at the engine's input size."""
    height, width = engine.info.input_size
    inputs = [to_input(f, (height, width), engine.info.resize)[None] for f in frames]
    for index in range(warmup):
        engine.infer(inputs[index % len(inputs)])
    times = []
    for index in range(runs):
        started = time.perf_counter()
        engine.infer(inputs[index % len(inputs)])
        times.append(time.perf_counter() - started)
    ms = np.asarray(times) * 1000
    return {"engine_ms_p50": float(np.median(ms)), "engine_ms_p95": float(np.percentile(ms, 95)),
            "engine_fps": float(1000 / np.median(ms)), "engine_runs": runs}


def bench_decode(args: argparse.Namespace) -> tuple[float, float]:
    """Decode-only FPS of the input (the ceiling for any pipeline reading it), and the CPU ms
    a frame costs to decode, FFmpeg's decoder threads included (nothing else runs in this
    process meanwhile, so its CPU time is the decoder's)."""
    source = open_input(args)
    started, cpu_started = time.perf_counter(), time.process_time()
    count = sum(1 for _ in itertools.islice(source.frames(threading.Event()), args.frames))
    cpu_ms = (time.process_time() - cpu_started) * 1000 / max(1, count)
    source.close()
    return count / (time.perf_counter() - started), cpu_ms


def single_thread_ms(chosen: engines.Choice, options: dict[str, Any], frames: list[np.ndarray],
                     args: argparse.Namespace) -> float:
    """The median ms of one single-thread call of the chosen engine: its share of the bound
    (a CPU pipeline runs its calls one core each)."""
    with engines.load(chosen.path, chosen.backend, **{**options, "threads": 1}) as single:
        return bench_engine(single, frames, max(20, args.runs // 2), args.warmup)["engine_ms_p50"]


def bench_naive(engine: Engine, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The single-threaded demo loop: read → resize → infer → overlay → write, one at a time."""
    height, width = engine.info.input_size
    palette = Palette.build(engine.info.classes,
                            parse_class_selection("drivable,objects", engine.info.classes))
    source = open_input(args)
    writer = None
    count, started = 0, time.perf_counter()
    for frame in itertools.islice(source.frames(threading.Event()), args.frames):
        labels = engine.infer(to_input(frame, (height, width), engine.info.resize)[None])[0]
        labels = content_labels(labels, frame.shape[:2], (height, width), engine.info.resize)
        image = overlay(frame, labels, palette, 0.5, True)
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), source.fps,
                                     (frame.shape[1], frame.shape[0]))
        writer.write(image)
        count += 1
    elapsed = time.perf_counter() - started
    source.close()
    if writer is not None:
        writer.release()
    return {"naive_fps": count / elapsed, "naive_frames": count}


def bench_pipeline(chosen: engines.Choice, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The real application in its own process, as a user runs it, on the same runtime,
    file and precision as the engine rows; run `--pipeline-runs` times, the run with the
    median FPS reported whole (its stages, CPU and latency), every run's FPS beside it."""
    runs = sorted((bench_pipeline_once(chosen, args, out) for _ in range(args.pipeline_runs)),
                  key=lambda run: run["pipeline_fps"])
    median = runs[(len(runs) - 1) // 2]
    return {**median, "pipeline_fps_runs": [run["pipeline_fps"] for run in runs]}


def bench_pipeline_once(chosen: engines.Choice, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One run of the application (see bench_pipeline)."""
    summary_path = out.with_suffix(".summary.json")
    command = [sys.executable, str(RUN_PY), *input_args(args), "--model", str(chosen.path),
               "--backend", chosen.backend, "--precision", chosen.precision,
               "--pace", "all", "--headless", "--save", str(out),
               "--summary-json", str(summary_path), "--quiet", *args.pipeline_args]
    if args.frames:
        command += ["--max-frames", str(args.frames)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"the pipeline run ({' '.join(command[1:])}) failed:\n{result.stderr}")
    summary = json.loads(summary_path.read_text())
    # The whole process's CPU between its first and last output (start-up excluded): what
    # the stage sum misses (decoder threads, Python between the stages, the queues) shows here.
    process_cpu_ms = summary["process_cpu_ms_per_frame"]
    # The same without the first and last tenth of the outputs (filling and draining); a run
    # too short for that reports its whole span.
    steady_fps = summary["steady_fps"] or summary["fps"]
    steady_cpu_ms = summary["steady_process_cpu_ms_per_frame"] or process_cpu_ms
    return {"pipeline_fps": summary["fps"], "pipeline_frames": summary["frames"],
            "pipeline_stages_ms": {k: v["p50"] for k, v in summary["stages_ms"].items()},
            "pipeline_stage_cpu_ms": {k: v["mean"] for k, v in summary["stages_ms"].items()
                                      if k in CPU_STAGES},
            "pipeline_latency_ms_p50": summary["stages_ms"]["latency"]["p50"],
            "pipeline_latency_ms_p95": summary["stages_ms"]["latency"]["p95"],
            "peak_rss_mb": summary.get("peak_rss_mb"),
            "pipeline_process_cpu_ms_per_frame": process_cpu_ms,
            "pipeline_cpu_utilisation": process_cpu_ms * summary["fps"] / 1000 / (os.cpu_count() or 1),
            "pipeline_steady_fps": steady_fps,
            # Where the process's CPU went, thread by thread (Linux; {} elsewhere or when short).
            "pipeline_threads_cpu_ms": summary.get("threads_cpu_ms_per_frame", {}),
            "pipeline_steady_cpu_utilisation": steady_cpu_ms * steady_fps / 1000 / (os.cpu_count() or 1)}


def markdown_table(results: list[dict[str, Any]]) -> str:
    header = ("| model | backend | precision | device | engine FPS (p50 ms) | pipeline FPS | naive FPS "
              "| pipeline / engine | pipeline / naive | CPU ms / frame (engine 1 thread) | machine "
              "bound FPS | pipeline / bound (steady state) | latency p50 / p95 ms | peak RSS MB |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['model']} | {r['backend']} | {r['precision']} | {r['device']} | "
            f"{r['engine_fps']:.1f} ({r['engine_ms_p50']:.1f}) | {r['pipeline_fps']:.1f} | "
            f"{r['naive_fps']:.1f} | {r['pipeline_vs_engine']:.2f} | {r['pipeline_vs_naive']:.2f} | "
            f"{r['cpu_ms_per_frame']:.1f} ({r['engine_1thread_ms']:.1f}) | {r['bound_fps']:.0f} | "
            f"{r['pipeline_vs_bound']:.3f} ({r['pipeline_steady_vs_bound']:.3f}) | "
            f"{r['pipeline_latency_ms_p50']:.0f} / {r['pipeline_latency_ms_p95']:.0f} | "
            f"{r['peak_rss_mb'] or 0:.0f} |" for r in results]
    return "\n".join([header, *rows])


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['backend']} {r['precision']}" for r in results]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(max(5, 3 * len(results)), 4))
    bars_of = (("engine_fps", "bare engine"),
               ("bound_fps", "machine bound (stage CPU sum)"),
               ("pipeline_fps", "pipeline"), ("naive_fps", "naive loop"))
    width = 0.8 / len(bars_of)
    for index, (key, name) in enumerate(bars_of):
        offset = (index - (len(bars_of) - 1) / 2) * width
        bars = ax.bar(x + offset, [r[key] for r in results], width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("frames per second")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1.3 * max(max(r[key] for key, _ in bars_of) for r in results))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class BenchError(RuntimeError):
    """A measurement that cannot be taken (the application's own run failed)."""


def run_reporting_errors(benchmark: Callable[[argparse.Namespace], int],
                         args: argparse.Namespace) -> int:
    """Run a benchmark; bad input or a failed run of the app becomes one `error:` line, exit 2
    (shared by realtime.bench, realtime.bench_io and fleet.bench)."""
    try:
        return benchmark(args)
    except (SourceError, EngineError, BenchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(args: argparse.Namespace) -> int:
    """Run every model x backend row."""
    return run_reporting_errors(benchmark, args)


def benchmark(args: argparse.Namespace) -> int:
    # The same allocator settings as run.py, so the naive loop and decode timing compare fairly.
    keep_frame_memory()
    frames = read_frames(args)
    models = args.model or [engines.DEFAULT_MODEL]
    decode_fps = bench_decode(args)[0]  # the CPU a frame is measured per row, around its pipeline runs
    height, width = frames[0].shape[:2]
    name = Path(args.video or args.images).name
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    print(f"input {name}: {len(frames)} frames {width}x{height}, decode {decode_fps:.0f} FPS")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for model, backend in [(m, b) for m in models for b in args.backend or ["auto"]]:
            # What --backend auto runs (an INT8 sibling may stand in), fixed once so that the
            # engine, naive and pipeline figures all measure the same runtime and file.
            chosen = (engines.choose(engines.resolve_model(model)) if backend == "auto" else
                      engines.Choice(backend, engines.resolve_model(model), "auto", "--backend"))
            options = {**args.engine_options, "precision": chosen.precision}
            with engines.load(chosen.path, chosen.backend, **options) as engine:
                info = engine.info
                row: dict[str, Any] = {"model": chosen.path.name, "backend": info.backend,
                                       "threads": args.threads,
                                       "precision": info.precision, "device": info.device,
                                       "input": name, "frames": len(frames),
                                       "frame_size": [width, height], "decode_fps": decode_fps}
                row.update(bench_engine(engine, frames, args.runs, args.warmup))
                row.update(bench_naive(engine, args, Path(scratch) / "naive.mp4"))
            # The stages measured alone on both sides of the pipeline runs, since the host's
            # speed drifts (10-20 % an hour on the shared machines here): the bound takes the means.
            single_ms, decode_ms = [single_thread_ms(chosen, options, frames, args)], [bench_decode(args)[1]]
            row.update(bench_pipeline(chosen, args, Path(scratch) / "pipeline.mp4"))
            single_ms.append(single_thread_ms(chosen, options, frames, args))
            decode_ms.append(bench_decode(args)[1])
            row["engine_1thread_ms"], row["engine_1thread_ms_before_after"] = float(np.mean(single_ms)), single_ms
            row["decode_cpu_ms"], row["decode_cpu_ms_before_after"] = float(np.mean(decode_ms)), decode_ms
            # The machine bound: every stage's CPU per frame, over the cores there are.
            # Decode is measured on its own (its FFmpeg threads are not the capture thread's).
            stages = {**row["pipeline_stage_cpu_ms"], "decode_cpu": row["decode_cpu_ms"]}
            row["cpu_ms_per_frame"] = sum(stages.values()) + row["engine_1thread_ms"]
            row["bound_fps"] = (os.cpu_count() or 1) * 1000 / row["cpu_ms_per_frame"]
            row["pipeline_vs_bound"] = row["pipeline_fps"] / row["bound_fps"]
            row["pipeline_steady_vs_bound"] = row["pipeline_steady_fps"] / row["bound_fps"]
            # The same bound from what the run really spent per frame, all threads counted.
            row["measured_bound_fps"] = (os.cpu_count() or 1) * 1000 / row["pipeline_process_cpu_ms_per_frame"]
            row["pipeline_vs_measured_bound"] = row["pipeline_fps"] / row["measured_bound_fps"]
            row["pipeline_vs_engine"] = row["pipeline_fps"] / row["engine_fps"]
            row["pipeline_vs_naive"] = row["pipeline_fps"] / row["naive_fps"]
            row["pipeline_vs_ceiling"] = row["pipeline_fps"] / min(decode_fps, row["engine_fps"])
            results.append(row)
            runs = " ".join(f"{fps:.1f}" for fps in row["pipeline_fps_runs"])
            print(f"{row['model']} {info.backend} {info.precision}: engine {row['engine_fps']:.1f} FPS "
                  f"(p50 {row['engine_ms_p50']:.1f} ms, p95 {row['engine_ms_p95']:.1f} ms), pipeline "
                  f"{row['pipeline_fps']:.1f} FPS (runs {runs}), naive {row['naive_fps']:.1f} FPS, "
                  f"pipeline/engine "
                  f"{row['pipeline_vs_engine']:.2f}, pipeline/naive {row['pipeline_vs_naive']:.2f}, "
                  f"bound {row['bound_fps']:.0f} FPS ({row['cpu_ms_per_frame']:.1f} CPU ms/frame), "
                  f"pipeline/bound {row['pipeline_vs_bound']:.3f} (steady state "
                  f"{row['pipeline_steady_fps']:.1f} FPS, {row['pipeline_steady_vs_bound']:.3f} of the bound, "
                  f"CPU use {row['pipeline_steady_cpu_utilisation']:.1%}); whole process "
                  f"{row['pipeline_process_cpu_ms_per_frame']:.1f} CPU ms/frame, CPU use "
                  f"{row['pipeline_cpu_utilisation']:.0%}, pipeline/measured bound "
                  f"{row['pipeline_vs_measured_bound']:.2f}",
                  flush=True)
            if row["pipeline_threads_cpu_ms"]:
                print("  " + format_threads_cpu(row["pipeline_threads_cpu_ms"]), flush=True)
    table = markdown_table(results)
    print(table)
    report = {"machine": machine, "results": results, "markdown": table}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        args.json.with_suffix(".md").write_text(table + "\n")
        plot(results, args.json.with_suffix(".png"), f"{name}, {width}x{height}, {machine}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path)
    source.add_argument("--images", help="image folder or quoted glob (e.g. the CamVid clip)")
    parser.add_argument("--model", type=Path, action="append", help="repeat for several models")
    parser.add_argument("--backend", action="append", default=None,
                        help="runtime, or auto (the default); repeat to compare runtimes in one run")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference CPU threads, for the bare engine, the naive loop and the pipeline")
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--runs", type=int, default=200, help="timed engine calls")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--pipeline-runs", type=int, default=3,
                        help="pipeline runs per row; the median one is reported (a shared machine's "
                             "noise moves a single run by several FPS)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write JSON here, plus a .md table and a .png chart beside it")
    parser.add_argument("--pipeline-args", nargs=argparse.REMAINDER, default=[],
                        help="extra run.py arguments for the pipeline run (last on the line)")
    args = parser.parse_args(argv)
    if args.pipeline_runs < 1:
        parser.error("--pipeline-runs must be at least 1")
    args.engine_options = {"threads": args.threads} if args.threads else {}
    if args.threads:
        args.pipeline_args = ["--threads", str(args.threads), *args.pipeline_args]
    return args


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
