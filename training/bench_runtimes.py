"""Benchmark the CPU runtimes against each other on one model: latency, throughput with calls
in flight, agreement with ONNX Runtime FP32, and mIoU on labelled frames.

    python -m training.bench_runtimes --data ../shared/data/camvid --json runtimes.json \\
        --variant onnxruntime:engines/models/roadseg.onnx \\
        --variant openvino:engines/models/roadseg.onnx:bf16 \\
        --variant openvino:runs/roadseg.int8.s8.onnx

Each --variant is BACKEND:MODEL[:PRECISION]. Latency rounds are interleaved (every variant
once per round, --rounds rounds of --calls calls), so drift on a shared machine hits all of
them alike; medians are reported. Throughput runs --streams threads, each making single-thread
calls, for --seconds, as `run.py --workers N` does. The first variant is the reference for
pixel agreement; mIoU uses the shared confusion matrix (engines.metrics.score_label_maps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import engines
from engines.base import Engine, EngineError
from engines.camvid import CamVid, DatasetError
from engines.frame_fit import engine_labels, fit_frames
from engines.metrics import score_label_maps
from engines.tool import run_tool


def parse_variant(text: str) -> tuple[str, Path, str]:
    backend, model, *rest = text.split(":")
    return backend, Path(model), rest[0] if rest else "auto"


def open_variant(backend: str, model: Path, precision: str, threads: int, streams: int = 1) -> Engine:
    return engines.load(model, backend, threads=threads, precision=precision, streams=streams,
                        spin=False)


def throughput(backend: str, model: Path, precision: str, frames: np.ndarray, streams: int,
               seconds: float) -> float:
    """Frames per second with `streams` threads each running single-thread calls."""
    with open_variant(backend, model, precision, threads=1, streams=streams) as engine:
        for frame in frames[:5]:
            engine.infer(frame[None])
        done = [0] * streams
        stop = time.perf_counter() + seconds

        def work(slot: int) -> None:
            index = slot
            while time.perf_counter() < stop:
                engine.infer(frames[index % len(frames)][None])
                done[slot] += 1
                index += streams

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(slot,)) for slot in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - started)


def main(args: argparse.Namespace) -> int:
    try:
        dataset = CamVid(args.data, args.split)
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    images, labels = dataset.load_images(args.limit), dataset.load_labels(args.limit)
    variants = [parse_variant(v) for v in args.variant]
    engines_open: list[Engine] = []
    rows: list[dict[str, Any]] = []
    try:
        for variant in variants:
            engines_open.append(open_variant(*variant, threads=args.threads))
        # Each variant is timed on frames at its own input size, as the app feeds it.
        inputs = [fit_frames(images, engine.info.input_size, engine.info.resize)
                  for engine in engines_open]
        # Accuracy first (untimed): labels of every variant, agreement with the first.
        reference = None
        for (backend, model, precision), engine in zip(variants, engines_open, strict=True):
            ids = np.stack(list(engine_labels(engine, images)))
            reference = ids if reference is None else reference
            metrics = score_label_maps(zip(ids, labels, strict=True), engine.info.classes)
            rows.append({"backend": backend, "model": str(model), "asked": precision,
                         "precision": engine.info.precision, "threads": args.threads,
                         "mean_iou": metrics["mean_iou"] * 100,
                         "road_iou": metrics["per_class_iou"]["Road"] * 100,
                         "agreement": float((ids == reference).mean()) * 100,
                         "start_seconds": engine.info.details.get("compile_seconds"), "ms": []})
        # Interleaved latency rounds after a warm-up of each variant.
        for engine, frames in zip(engines_open, inputs, strict=True):
            for frame in frames[:10]:
                engine.infer(frame[None])
        for round_index in range(args.rounds):
            for row, engine, frames in zip(rows, engines_open, inputs, strict=True):
                for call in range(args.calls):
                    frame = frames[(round_index * args.calls + call) % len(frames)][None]
                    started = time.perf_counter()
                    engine.infer(frame)
                    row["ms"].append((time.perf_counter() - started) * 1000)
    except EngineError as error:
        print(f"error: {error}")
        return 2
    finally:
        for engine in engines_open:
            engine.close()
    for row, variant, frames in zip(rows, variants, inputs, strict=True):
        times = row.pop("ms")
        row.update(ms_p50=float(np.median(times)), ms_p95=float(np.percentile(times, 95)),
                   fps=1000 / float(np.median(times)), input_size=list(frames.shape[1:3]))
        row[f"fps_{args.streams}_streams"] = throughput(*variant, frames, args.streams, args.seconds)
    base = rows[0]["ms_p50"]
    lines = [f"| runtime | model | input | precision | ms p50 ({args.threads} threads) | vs first | FPS | "
             f"FPS, {args.streams} single-thread calls in flight | mIoU | Road IoU | pixels = first |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        height, width = row["input_size"]
        lines.append(f"| {row['backend']} | {Path(row['model']).name} | {width}x{height} | {row['precision']} | "
                     f"{row['ms_p50']:.2f} | {row['ms_p50'] / base:.2f} | {row['fps']:.0f} | "
                     f"{row[f'fps_{args.streams}_streams']:.0f} | {row['mean_iou']:.2f} | "
                     f"{row['road_iou']:.2f} | {row['agreement']:.2f} % |")
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "split": args.split,
                                         "frames": len(images), "rows": rows, "markdown": table},
                                        indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="BACKEND:MODEL[:PRECISION]")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
