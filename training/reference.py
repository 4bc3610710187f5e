"""Compare a model's road with a reference model's drivable area on real, unlabelled frames.

    python -m training.reference --model roadseg --frames ../shared/data/bdd-samples \
        --sheet contact.png --json reference.json

The reference is TwinLiteNet (BDD100K-trained, ../shared/teachers/twinlitenet): it is not ground
truth (BDD's drivable area is the lanes a car may use, CamVid's Road all road surface), but it
finds the road at night and in snow and leaves the car's hood out. Per frame this reports:
- `road_recall`: the share of the reference's drivable pixels that the model labels drivable;
- `drivable_iou`: intersection over union of the two drivable areas. Recall alone rewards
  painting more of the frame (walls, pavement, the hood); IoU does not, but it also counts road
  outside the lanes BDD calls drivable against the model, so read the two together;
- `bottom_drivable` / `reference_bottom_drivable`: the drivable share of the bottom tenth of
  the frame, where every one of these dashcams sees its own hood;
- `ego_share`: the share of the frame the model labels as the ego vehicle, if it has the class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

import engines
from engines.base import Engine, EngineError
from engines.frames import list_images
from engines.labels import EGO_CLASS
from engines.tool import run_tool

TEACHER = Path("../shared/teachers/twinlitenet/twinlitenet.onnx")
BOTTOM_SHARE = 0.1


class Reference:
    """TwinLiteNet through ONNX Runtime: float RGB 0..1 [N, 3, 360, 640] in, logits out."""

    def __init__(self, path: Path, threads: int = 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        _, _, self.height, self.width = self.session.get_inputs()[0].shape

    def drivable(self, image: np.ndarray) -> np.ndarray:
        """Boolean drivable mask at the image's size for one uint8 BGR frame."""
        resized = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        batch = resized[None, ..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255
        logits = self.session.run(["drivable"], {"image": np.ascontiguousarray(batch)})[0]
        mask = logits[0].argmax(0).astype(np.uint8)
        return cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0


def predict(engine: Engine, image: np.ndarray) -> np.ndarray:
    """The engine's class ids at the image's size (resized in and out as the live app does)."""
    height, width = engine.info.input_size
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    labels = engine.infer(resized[None])[0].astype(np.uint8)
    return cv2.resize(labels, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)


def compare_frame(labels: np.ndarray, reference: np.ndarray, engine: Engine) -> dict[str, Any]:
    """The per-frame figures described in the module docstring."""
    classes = engine.info.classes
    drivable = np.isin(labels, [c.id for c in classes if c.group == "drivable"])
    bottom = slice(int(labels.shape[0] * (1 - BOTTOM_SHARE)), None)
    has_ego = any(c.name == EGO_CLASS.name for c in classes)
    return {
        "road_recall": float((drivable & reference).sum() / max(1, reference.sum())),
        "drivable_iou": float((drivable & reference).sum() / max(1, (drivable | reference).sum())),
        "model_drivable": float(drivable.mean()),
        "reference_drivable": float(reference.mean()),
        "bottom_drivable": float(drivable[bottom].mean()),
        "reference_bottom_drivable": float(reference[bottom].mean()),
        "ego_share": float((labels == EGO_CLASS.id).mean()) if has_ego else None,
    }


def blend_classes(image: np.ndarray, labels: np.ndarray, engine: Engine) -> np.ndarray:
    """The class colours at half opacity over every class the app overlays by default
    (drivable and objects), so the sheet shows what a user sees."""
    colours = np.zeros((256, 3), np.uint8)
    shown = np.zeros(256, bool)
    for info in engine.info.classes:
        colours[info.id] = info.color[::-1]
        shown[info.id] = info.group in ("drivable", "object")
    out = image.copy()
    mask = shown[labels]
    out[mask] = (0.5 * out[mask] + 0.5 * colours[labels[mask]]).astype(np.uint8)
    return out


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]], width: int = 480) -> np.ndarray:
    """One row per frame: the model's overlay beside the reference's drivable area (green)."""
    tiles = []
    for name, ours, reference in rows:
        height = round(ours.shape[0] * width / ours.shape[1])
        left = cv2.resize(ours, (width, height), interpolation=cv2.INTER_AREA)
        right = cv2.resize(reference, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(left, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([left, right], axis=1))
    return np.concatenate(tiles, axis=0)


def main(args: argparse.Namespace) -> int:
    frames = list_images(args.frames) if args.frames.is_dir() else []
    if not frames:
        print(f"error: no images in {args.frames}; pass --frames with a folder of image frames",
              file=sys.stderr)
        return 2
    if not args.teacher.is_file():
        print(f"error: reference model {args.teacher} not found; pass --teacher", file=sys.stderr)
        return 2
    try:
        engine = engines.load(args.model, args.backend)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with engine:
        results, sheet_rows = compare_frames(engine, Reference(args.teacher), frames)
    recalls = [r["road_recall"] for r in results.values()]
    ious = [r["drivable_iou"] for r in results.values()]
    print(f"road recall: lowest {min(recalls) * 100:.1f}%, mean {np.mean(recalls) * 100:.1f}%; "
          f"drivable IoU: mean {np.mean(ious) * 100:.1f}% over {len(results)} frames")
    if args.sheet:
        cv2.imwrite(str(args.sheet), contact_sheet(sheet_rows))
        print(f"wrote {args.sheet} (left: {args.model}; right: reference drivable area)")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "frames": results}, indent=2))
    return 0


def compare_frames(engine: Engine, reference: Reference, frames: list[Path]
                   ) -> tuple[dict[str, Any], list[tuple[str, np.ndarray, np.ndarray]]]:
    """Per-frame figures (printed as they come) and the contact sheet's rows."""
    results, sheet_rows = {}, []
    print(f"{'frame':<22}{'road recall %':>14}{'IoU %':>7}{'bottom drivable %':>19}{'ref bottom %':>14}"
          f"{'ego %':>8}")
    for path in frames:
        # Both models on the same frame, then the figures and the two overlays.
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        labels = predict(engine, image)
        truth = reference.drivable(image)
        results[path.name] = row = compare_frame(labels, truth, engine)
        ego = "-" if row["ego_share"] is None else f"{row['ego_share'] * 100:.1f}"
        print(f"{path.stem:<22}{row['road_recall'] * 100:>14.1f}{row['drivable_iou'] * 100:>7.1f}"
              f"{row['bottom_drivable'] * 100:>19.1f}{row['reference_bottom_drivable'] * 100:>14.1f}{ego:>8}")
        ours = blend_classes(image, labels, engine)
        theirs = image.copy()
        theirs[truth] = (0.5 * theirs[truth] + 0.5 * np.array([0, 200, 0])).astype(np.uint8)
        sheet_rows.append((path.stem, ours, theirs))
    return results, sheet_rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(engines.DEFAULT_MODEL))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--frames", type=Path, default=Path("../shared/data/bdd-samples"))
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
