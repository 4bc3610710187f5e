"""Train RoadSegNet on CamVid from scratch.

    python -m training.train --data ../shared/data/camvid --epochs 300 --out runs/base
    python -m training.train --data ../shared/data/camvid --splits train val --out runs/ship
    python -m training.train ... --resume runs/base/last.pt      # continue where it stopped
    python -m training.train ... --init runs/base/last.pt --lr 2e-3   # warm restart: weights only,
                                                                      # fresh optimizer + schedule

Writes <out>/last.pt every epoch and <out>/best.pt on a new best val mIoU, plus log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engines.labels import CAMVID_CLASSES, CAMVID_VOID
from engines.metrics import ConfusionMatrix, format_table
from training.data import augment_batch, class_weights, iterate_batches, load_splits
from training.export import preprocess_bgr, total_epochs
from training.model import RoadSegNet, build_model, count_parameters

AUX_WEIGHT = 0.4
AUX_LABEL_STRIDE = 4


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def poly_lr(base_lr: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then polynomial decay (power 0.9), the usual schedule for segmentation."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1 - (step - warmup) / max(1, total - warmup)) ** 0.9


def segmentation_loss(outputs: tuple[torch.Tensor, ...], target: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy on the main head plus the auxiliary heads; void ignored.

    The main logits are upsampled to the label size so thin objects are supervised at full
    detail. The auxiliary heads only steer the deep features, so they are scored against the
    labels subsampled to 1/4 (nearest), which makes a CPU training step about a third cheaper.
    """
    main = F.interpolate(outputs[0], size=target.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(main, target, weight=weights, ignore_index=CAMVID_VOID)
    coarse_target = target[:, ::AUX_LABEL_STRIDE, ::AUX_LABEL_STRIDE]
    for logits in outputs[1:]:
        logits = F.interpolate(logits, size=coarse_target.shape[-2:], mode="bilinear",
                               align_corners=False)
        total = total + AUX_WEIGHT * F.cross_entropy(logits, coarse_target, weight=weights,
                                                     ignore_index=CAMVID_VOID)
    return total


def train_one_epoch(model: RoadSegNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    labels: torch.Tensor, weights: torch.Tensor, args: argparse.Namespace,
                    epoch: int, generator: torch.Generator) -> float:
    """One pass over the training frames; returns the mean loss."""
    model.train()
    batches = iterate_batches(len(images), args.batch_size, generator)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * args.epochs
    losses = []
    progress = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                    disable=not args.progress)
    for step, index in enumerate(progress):
        # Schedule: learning rate from the global step, so resuming continues the same curve.
        lr = poly_lr(args.lr, epoch * steps_per_epoch + step, total_steps, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Augment on the training device; images stay uint8 BGR like the deployed model's input.
        batch_images, batch_labels = augment_batch(images[index], labels[index], args.crop,
                                                   tuple(args.scale), generator)
        batch_images = batch_images.to(args.device, non_blocking=True)
        batch_labels = batch_labels.to(args.device, non_blocking=True)
        # Forward, loss, backward, step.
        outputs = model(preprocess_bgr(batch_images))
        loss = segmentation_loss(outputs, batch_labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def evaluate(model: RoadSegNet, images: torch.Tensor, labels: torch.Tensor, device: str,
             batch_size: int = 4) -> dict[str, Any]:
    """Full-resolution evaluation of a PyTorch model; same metrics as every other backend."""
    model.eval()
    matrix = ConfusionMatrix(len(CAMVID_CLASSES), ignore_index=CAMVID_VOID)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        logits = model(preprocess_bgr(batch))
        logits = F.interpolate(logits, size=batch.shape[1:3], mode="bilinear", align_corners=False)
        matrix.update(logits.argmax(1).cpu().numpy(), labels[start:start + batch_size].numpy())
    road = [c.id for c in CAMVID_CLASSES if c.group == "drivable"]
    return matrix.summary([c.name for c in CAMVID_CLASSES], drivable_ids=road)


def save_checkpoint(path: Path, model: RoadSegNet, optimizer: torch.optim.Optimizer, epoch: int,
                    args: argparse.Namespace, best_miou: float, metrics: dict[str, Any],
                    generator: torch.Generator) -> None:
    """Write atomically so an interrupted save never leaves a truncated checkpoint."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "best_miou": best_miou, "metrics": metrics, "num_classes": model.config.num_classes,
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def main(args: argparse.Namespace) -> int:
    generator = seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    # Data: the whole split in memory; on a GPU keep it there so augmentation runs there too.
    train_images, train_labels = load_splits(args.data, args.splits, args.limit)
    val_images, val_labels = load_splits(args.data, ["val"], args.limit)
    if args.device != "cpu":
        train_images, train_labels = train_images.to(args.device), train_labels.to(args.device)
    weights = class_weights(train_labels, len(CAMVID_CLASSES)).to(args.device)

    model = build_model(args.model_size, len(CAMVID_CLASSES)).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    start_epoch, best_miou = 0, -1.0
    if args.resume:
        checkpoint = torch.load(args.resume, map_location=args.device, weights_only=False)
        model.load_state_dict(checkpoint["model"], strict=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        start_epoch, best_miou = checkpoint["epoch"] + 1, checkpoint["best_miou"]
        args.prior_epochs = checkpoint["args"].get("prior_epochs", 0)
        print(f"resumed from {args.resume} at epoch {start_epoch}")
    elif args.init:
        # A warm restart (SGDR-style): the weights carry over, the optimizer and LR curve start anew.
        checkpoint = torch.load(args.init, map_location=args.device, weights_only=False)
        model.load_state_dict(checkpoint["model"], strict=True)
        # Epochs behind these weights, so exported provenance counts the whole chain.
        args.prior_epochs = total_epochs(checkpoint)
        print(f"initialised from {args.init} ({args.prior_epochs} epochs behind it); "
              f"new schedule of {args.epochs} epochs")
    print(f"model {args.model_size}: {count_parameters(model) / 1e6:.3f} M parameters; "
          f"{len(train_images)} training frames from {args.splits}; device {args.device}")

    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        loss = train_one_epoch(model, optimizer, train_images, train_labels, weights, args,
                               epoch, generator)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss,
                                  "seconds": time.perf_counter() - started}
        metrics: dict[str, Any] = {}
        last_epoch = epoch + 1 == args.epochs
        if (epoch + 1) % args.eval_every == 0 or last_epoch:
            metrics = evaluate(model, val_images, val_labels, args.device)
            record.update(val_miou=metrics["mean_iou"], val_road_iou=metrics["per_class_iou"]["Road"],
                          val_pixel_accuracy=metrics["pixel_accuracy"])
        print(json.dumps(record), flush=True)
        with open(args.out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if metrics and metrics["mean_iou"] > best_miou:
            best_miou = metrics["mean_iou"]
            save_checkpoint(args.out / "best.pt", model, optimizer, epoch, args, best_miou,
                            metrics, generator)
        save_checkpoint(args.out / "last.pt", model, optimizer, epoch, args, best_miou,
                        metrics, generator)
        if not math.isfinite(loss):
            print("loss is not finite; stopping (lower --lr)")
            return 1
    if metrics:
        print(format_table(metrics, f"val metrics after {args.epochs} epochs"))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--splits", nargs="+", default=["train"], help="training splits (train, val)")
    parser.add_argument("--out", type=Path, default=Path("runs/base"))
    parser.add_argument("--model-size", default="base", choices=["small", "base", "large"])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"))
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=1,
                        help="validate every N epochs (CPU runs use 5-10 to save time)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N frames of each split")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted run: weights, optimizer, RNG and schedule")
    parser.add_argument("--init", type=Path, default=None,
                        help="start a new schedule from these weights (warm restart, fine-tuning)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    args.prior_epochs = 0  # set by --init; --resume keeps the value stored in the checkpoint
    if args.resume and args.init:
        parser.error("--resume continues a run and --init starts a new one from its weights; pass one")
    return args


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
