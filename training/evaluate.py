"""Evaluate any model file `engines.load` opens (.pt checkpoint, .onnx, later TensorRT engines)
on labelled CamVid frames, with the one shared confusion matrix.

    python -m training.evaluate --model engines/models/roadseg.onnx --data ../shared/data/camvid
    python -m training.evaluate --model runs/base/best.pt --split val --json metrics.json
    python -m training.evaluate --corrupt all          # clean + each corruption, ratio to clean
    python -m training.evaluate --drives 0006R0 --split train    # one drive of a split
    python -m training.evaluate ... --exclude 'frames/*.png'      # skip frames used by --adapt
    python -m training.evaluate --masks runs/masks/ --split val  # what a run saved (--save-masks)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

import engines
from engines.base import Engine, EngineError
from engines.camvid import CamVid, DatasetError
from engines.frames import listed_names
from engines.labels import CAMVID_CLASSES, LabelsError, load_labels_file
from engines.metrics import evaluate_engine, format_table, score_label_maps
from engines.tool import run_tool
from training.corruptions import CORRUPTIONS, corrupt_frames


def main(args: argparse.Namespace) -> int:
    try:
        dataset = CamVid(args.data, args.split)
        if args.masks is not None:
            return score_masks(args.masks, dataset, args)
        engine = engines.load(args.model, args.backend)
    except (EngineError, DatasetError, LabelsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with engine:
        return score(engine, dataset, args)


def score_masks(folder: Path, dataset: CamVid, args: argparse.Namespace) -> int:
    """Score the class-id PNGs of a run (`run.py --save-masks`) against the split's labels,
    matched by file name: the app's own output, hood handling and runtime included."""
    # Masks are PNGs named after their frames (whose own files may be JPEGs): match stems.
    by_name = {path.stem: index for index, path in enumerate(dataset.image_paths)}
    masks = [path for path in sorted(folder.glob("*.png")) if path.stem in by_name]
    if not masks:
        raise DatasetError(f"--masks {folder}: no PNG there is named like a frame of CamVid "
                           f"{args.split} (e.g. {dataset.image_paths[0].name}); save them with "
                           f"python run.py --images {dataset.root / args.split} --save-masks {folder}")
    table = folder / "classes.json"
    classes = load_labels_file(table)["classes"] if table.exists() else CAMVID_CLASSES

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for mask in masks:
            labels = dataset.load_labels(indices=[by_name[mask.stem]])[0]
            yield cv2.imread(str(mask), cv2.IMREAD_UNCHANGED), labels

    summary = score_label_maps(pairs(), classes)
    summary.update(masks=str(folder), split=args.split, frames=len(masks))
    print(format_table(summary, f"masks in {folder} on CamVid {args.split}, {len(masks)} of its "
                                f"{len(dataset)} frames"))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


def score(engine: Engine, dataset: CamVid, args: argparse.Namespace) -> int:
    """Clean metrics, then each asked-for corruption, printed and optionally written as JSON."""
    skipped = listed_names(args.exclude)
    chosen = [i for i, drive in enumerate(dataset.sequences()) if not args.drives or drive in args.drives]
    keep = [i for i in chosen if dataset.image_paths[i].name not in skipped]
    if not keep:
        print(f"error: no frames of drives {args.drives} in CamVid {args.split} (it has "
              f"{sorted(set(dataset.sequences()))})", file=sys.stderr)
        return 2
    images = dataset.load_images(args.limit, indices=keep)
    labels = dataset.load_labels(args.limit, indices=keep)
    where = (f"CamVid {args.split}{f' drives {args.drives}' if args.drives else ''}, {len(images)} "
             f"frames{f' ({len(chosen) - len(keep)} skipped by --exclude)' if skipped else ''}")
    summary = evaluate_engine(engine, images, labels, args.batch_size)
    summary.update(model=str(args.model), backend=engine.info.backend,
                   precision=engine.info.precision, split=args.split, drives=args.drives,
                   frames=len(images))
    print(format_table(summary, f"{args.model} ({engine.info.backend} {engine.info.precision}) on {where}"))
    if args.corrupt:
        names = list(CORRUPTIONS) if args.corrupt == "all" else [args.corrupt]
        summary["corrupted"] = {}
        for name in names:
            corrupted = corrupt_frames(images, name, args.severity, args.seed)
            result = evaluate_engine(engine, corrupted, labels, args.batch_size)
            result["ratio_to_clean"] = result["mean_iou"] / summary["mean_iou"]
            summary["corrupted"][name] = result
        print(f"\ncorruptions (severity {args.severity}, seed {args.seed}) on {where}")
        print(f"{'corruption':<12}{'mIoU %':>8}{'Road %':>8}{'x clean':>9}")
        print(f"{'clean':<12}{summary['mean_iou'] * 100:>8.2f}"
              f"{summary['per_class_iou']['Road'] * 100:>8.2f}{1:>9.2f}")
        for name, result in summary["corrupted"].items():
            print(f"{name:<12}{result['mean_iou'] * 100:>8.2f}"
                  f"{result['per_class_iou']['Road'] * 100:>8.2f}{result['ratio_to_clean']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(engines.DEFAULT_MODEL),
                        help="a model file or a shipped model's name")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--drives", nargs="*", default=[], metavar="DRIVE",
                        help="score only these drives of the split (e.g. the held-out 0006R0)")
    parser.add_argument("--exclude", default=None, metavar="SOURCE",
                        help="skip the frames this folder or quoted glob lists (by file name), "
                             "e.g. those a model adapted to with training.train --adapt")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--corrupt", choices=[*CORRUPTIONS, "all"], default=None,
                        help="also score under a fixed corruption (or all of them)")
    parser.add_argument("--severity", type=int, choices=[1, 2, 3], default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", type=Path, default=None, metavar="DIR",
                        help="instead of running a model, score the class-id PNGs a run saved "
                             "(python run.py --images DATA/SPLIT --save-masks DIR)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
