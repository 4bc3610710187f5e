"""Speed/accuracy frontier of the RoadSegNet sizes: parameters, GFLOPs, ONNX Runtime CPU speed
and, for trained checkpoints, CamVid val metrics.

    python -m training.frontier --threads 2                      # every size, speed only
    python -m training.frontier --checkpoint runs/small/best.pt --checkpoint runs/base/best.pt \\
        --data ../shared/data/camvid --json frontier.json --plot frontier.png

Speed does not depend on the weights, so sizes without a checkpoint are exported untrained and
timed; accuracy needs a checkpoint (python -m training.train --model-size ...). Each checkpoint is
exported to the contract ONNX and scored with the same tool as any other model file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import engines
from engines.base import Engine
from engines.camvid import CamVid
from engines.checkpoint import CheckpointError, load_checkpoint_model, total_epochs
from engines.metrics import evaluate_engine
from engines.roadsegnet import (CONFIGS, PRETRAINABLE, LiteSegNet, RoadSegNet, build_model, count_flops,
                                count_parameters)
from engines.tool import run_tool
from training.export import export_onnx

REALTIME_FPS = 60


def time_engine(engine: Engine, runs: int = 100) -> float:
    """Median milliseconds of one batch-1 360x480 inference after warm-up."""
    image = np.random.default_rng(0).integers(0, 256, (1, 360, 480, 3), dtype=np.uint8)
    for _ in range(10):
        engine.infer(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.infer(image)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def measure(name: str, net: RoadSegNet | LiteSegNet, scratch: Path, threads: int,
            val: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """One frontier point: size, speed, and val metrics when the network is trained."""
    with engines.load(export_onnx(net, scratch / "model.onnx"), threads=threads) as engine:
        ms = time_engine(engine)
        row: dict[str, Any] = {
            "name": name, "widths": list(net.config.widths), "blocks": list(net.config.blocks),
            "parameters_m": count_parameters(net) / 1e6, "gflops": count_flops(net) / 1e9,
            "ms": ms, "fps": 1000 / ms, "threads": threads,
        }
        if val is not None:
            summary = evaluate_engine(engine, *val)
            row.update(val_miou=summary["mean_iou"] * 100,
                       val_road_iou=summary["per_class_iou"]["Road"] * 100,
                       val_pixel_accuracy=summary["pixel_accuracy"] * 100)
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the frontier points."""
    header = (f"| model | widths | blocks | parameters (M) | GFLOPs @360x480 | ORT CPU ms "
              f"({rows[0]['threads']} threads) | FPS | val mIoU | val Road IoU |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        miou = f"{row['val_miou']:.2f}" if "val_miou" in row else "untrained"
        road = f"{row['val_road_iou']:.2f}" if "val_road_iou" in row else "—"
        lines.append(f"| {row['name']} | {tuple(row['widths'])} | {tuple(row['blocks'])} | "
                     f"{row['parameters_m']:.3f} | {row['gflops']:.2f} | {row['ms']:.1f} | "
                     f"{row['fps']:.0f} | {miou} | {road} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """val mIoU against FPS, with the real-time target as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [row for row in rows if "val_miou" in row]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r["fps"] for r in trained], [r["val_miou"] for r in trained], "o")
    for row in trained:
        axis.annotate(f"{row['name']} ({row['parameters_m']:.2f} M)", (row["fps"], row["val_miou"]),
                      textcoords="offset points", xytext=(5, 5))
    axis.axvline(REALTIME_FPS, color="grey", linestyle="--", label=f"{REALTIME_FPS} FPS")
    axis.set_xlabel(f"FPS, ONNX Runtime CPU, {rows[0]['threads']} threads, batch 1, 360x480")
    axis.set_ylabel("CamVid val mIoU (%)")
    axis.margins(x=0.25, y=0.15)  # room for the point labels
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> int:
    val = None
    if args.checkpoint:
        dataset = CamVid(args.data, "val")
        val = (dataset.load_images(args.limit), dataset.load_labels(args.limit))
    points = []
    for path in args.checkpoint:
        try:
            net, checkpoint = load_checkpoint_model(path)
        except CheckpointError as error:
            print(f"error: {error}")
            return 2
        points.append((f"{checkpoint['args']['model_size']} ({total_epochs(checkpoint)} ep)", net))
    if not points:
        points = [(name, build_model(name).eval()) for name in (*CONFIGS, *PRETRAINABLE)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, net in points:
            rows.append(measure(name, net, Path(scratch), args.threads, val))
            print(f"measured {name}: {rows[-1]['fps']:.0f} FPS", flush=True)
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot and val is not None:
        plot_rows(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="trained checkpoint (repeat for each size); without any, time every size untrained")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val frames")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="write a val mIoU vs FPS chart (PNG)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
