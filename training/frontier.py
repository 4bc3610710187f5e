"""Size/speed table of the RoadSegNet sizes: parameters, GFLOPs and ONNX Runtime CPU speed.

    python -m training.frontier --threads 2

Speed does not depend on the weights, so untrained networks are exported and timed; accuracy
comes from training each size (python -m training.train --model-size ...).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import engines
from training.export import export_onnx
from training.model import CONFIGS, build_model, count_flops, count_parameters


def time_engine(path: Path, threads: int, runs: int = 100) -> float:
    """Median milliseconds of one batch-1 360x480 inference after warm-up."""
    engine = engines.load(path, threads=threads)
    image = np.random.default_rng(0).integers(0, 256, (1, 360, 480, 3), dtype=np.uint8)
    for _ in range(10):
        engine.infer(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.infer(image)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def main(args: argparse.Namespace) -> int:
    print(f"| size | widths | blocks | parameters (M) | GFLOPs @360x480 | ORT CPU ms ({args.threads} threads) | FPS |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name, config in CONFIGS.items():
            net = build_model(name).eval()
            path = export_onnx(net, Path(scratch) / f"{name}.onnx")
            ms = time_engine(path, args.threads)
            print(f"| {name} | {config.widths} | {config.blocks} | {count_parameters(net) / 1e6:.3f} | "
                  f"{count_flops(net) / 1e9:.2f} | {ms:.1f} | {1000 / ms:.0f} |", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
