"""Evaluate any model file `engines.load` opens (.pt checkpoint, .onnx, later TensorRT engines)
on labelled CamVid frames, with the one shared confusion matrix.

    python -m training.evaluate --model engines/models/roadseg.onnx --data ../shared/data/camvid
    python -m training.evaluate --model runs/base/best.pt --split val --json metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import engines
from engines.base import Engine, EngineError
from engines.labels import CAMVID_VOID
from engines.metrics import ConfusionMatrix, format_table
from training.camvid import CamVid, DatasetError


def evaluate_engine(engine: Engine, images: np.ndarray, labels: np.ndarray,
                    batch_size: int = 1) -> dict[str, Any]:
    """Run the engine on uint8 BGR frames and score its class ids against the label maps.

    Frames are resized to the engine's input size when they differ, and predictions are
    brought back to the label size with nearest-neighbour, as the renderer does.
    """
    classes = engine.info.classes
    matrix = ConfusionMatrix(len(classes), ignore_index=CAMVID_VOID)
    height, width = engine.info.input_size
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.shape[1:3] != (height, width):
            batch = np.stack([cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR)
                              for im in batch])
        predictions = engine.infer(batch)
        for prediction, truth in zip(predictions, labels[start:start + batch_size], strict=True):
            if prediction.shape != truth.shape:
                prediction = cv2.resize(prediction.astype(np.uint8), truth.shape[::-1],
                                        interpolation=cv2.INTER_NEAREST)
            matrix.update(prediction, truth)
    drivable = [c.id for c in classes if c.group == "drivable"]
    return matrix.summary([c.name for c in classes], drivable_ids=drivable)


def main(args: argparse.Namespace) -> int:
    try:
        engine = engines.load(args.model, args.backend)
        dataset = CamVid(args.data, args.split)
    except (EngineError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    images, labels = dataset.load_images(args.limit), dataset.load_labels(args.limit)
    summary = evaluate_engine(engine, images, labels, args.batch_size)
    summary.update(model=str(args.model), backend=engine.info.backend,
                   precision=engine.info.precision, split=args.split, frames=len(images))
    print(format_table(summary, f"{args.model} ({engine.info.backend} {engine.info.precision}) "
                                f"on CamVid {args.split}, {len(images)} frames"))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=engines.DEFAULT_MODEL)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
