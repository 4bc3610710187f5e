"""CamVid reader and GPU/CPU batch augmentation that keeps images and labels aligned.

The whole split fits in memory (367 frames of 360x480x3 uint8 = 190 MB), so the reader loads
it once into tensors and the augmentation runs on batches on the training device: no worker
processes fighting the training loop for the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from engines.camvid import CamVid, DatasetError
from engines.labels import CAMVID_VOID


def load_splits(root: Path, splits: list[str], limit: int | None = None,
                sequences: set[str] | None = None,
                exclude: set[str] = frozenset(),
                exclude_names: set[str] = frozenset()) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, H, W, 3] uint8 BGR and labels [N, H, W] uint8 of several splits, concatenated.

    `sequences` keeps only frames of those drives, `exclude` drops frames of those drives (a
    drive-disjoint validation holds one training drive out), `exclude_names` drops frames by
    file name; `limit` applies per split after all three.
    """
    images, labels = [], []
    for split in splits:
        dataset = CamVid(root, split)
        keep = [i for i, (seq, path) in enumerate(zip(dataset.sequences(), dataset.image_paths))
                if (sequences is None or seq in sequences) and seq not in exclude
                and path.name not in exclude_names][:limit]
        if not keep:
            continue
        images.append(dataset.load_images(indices=keep))
        labels.append(dataset.load_labels(indices=keep))
    if not images:
        raise DatasetError(f"no CamVid frames in {root} {splits} for drives {sorted(sequences or [])}"
                           f" (drives present: {sorted(drives(root, splits))})")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def void_to_train_labels(labels: torch.Tensor, void: int, ego: int, ignore: int,
                         lowest_top: float = 0.6, narrowest: float = 0.2) -> torch.Tensor:
    """Training labels from CamVid's: void becomes `ignore`, except the car's own hood.

    In drive 0001TP the camera sees its car's dark bonnet, and CamVid leaves it void: a void
    region that touches the bottom edge, starts below `lowest_top` of the height and spans at
    least `narrowest` of the width is that hood, so it becomes the `ego` class and the network
    learns from real hood pixels beside the synthetic ones. In place; returns `labels`.
    """
    height, width = labels.shape[1:]
    for frame in labels:
        void_mask = (frame == void).numpy().astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(void_mask, connectivity=8)
        hood = np.zeros((height, width), bool)
        for index in range(1, count):
            left, top, box_width, box_height, _ = stats[index]
            if (top + box_height == height and top >= lowest_top * height
                    and box_width >= narrowest * width):
                hood |= components == index
        frame[torch.from_numpy(void_mask.astype(bool) & ~hood)] = ignore
        frame[torch.from_numpy(hood)] = ego
    return labels


def drives(root: Path, splits: list[str]) -> set[str]:
    """The drive (sequence) names present in some splits, e.g. {'0001TP', '0006R0', '0016E5'}."""
    return {seq for split in splits for seq in CamVid(root, split).sequences()}


def class_weights(labels: torch.Tensor, num_classes: int, c: float = 1.02) -> torch.Tensor:
    """ENet's weighting 1 / ln(c + p_class): rare classes (pedestrian, bicyclist, pole) get up
    to ~10x the weight of road and sky, bounded unlike plain inverse frequency."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes + 1)[:num_classes]
    share = counts.double() / counts.sum().clamp(min=1)
    return (1.0 / torch.log(c + share)).float()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 scale) of uint8 NHWC images."""
    pixels = images.reshape(-1, 3).double()
    return pixels.mean(0).tolist(), pixels.std(0).tolist()


def augment_batch(images: torch.Tensor, labels: torch.Tensor, crop: tuple[int, int],
                  scale_range: tuple[float, float] = (0.5, 2.0),
                  generator: torch.Generator | None = None,
                  fill_label: int = CAMVID_VOID,
                  aspect_range: tuple[float, float] = (1.0, 1.0),
                  jitter: float = 1.0,
                  roll_degrees: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, aspect ratio, camera roll, crop (padded with `fill_label`), horizontal
    flip and photometric jitter.

    `roll_degrees` rotates each frame by up to that many degrees either way about its centre
    (a camera mounted askew, a car leaning in a bend); the corners it uncovers are
    `fill_label`. Drawn only when asked for, like the aspect.

    `jitter` scales the photometric ranges (1: brightness, contrast and saturation x0.7-1.3,
    hue +-0.03 of the circle; 0: none); the draws are the same whatever its value, so runs
    with another strength keep their random stream.

    `aspect_range` scales the width against the height: the app stretches every frame to the
    model's 4:3 input, so a 16:9 camera's frames arrive squashed to 0.75 of their width, a
    shape CamVid's 4:3 frames never show unless training squashes them too.

    images: uint8 [B, H, W, 3] BGR; labels: uint8 [B, H, W]. Returns uint8 images in the same
    NHWC layout (the model wrapper's preprocessing is reused) and int64 labels [B, ch, cw].
    Geometric ops use bilinear for images and nearest for labels so labels stay exact ids.
    """
    crop_h, crop_w = crop
    device = images.device
    out_images = torch.zeros((len(images), crop_h, crop_w, 3), dtype=torch.uint8, device=device)
    out_labels = torch.full((len(images), crop_h, crop_w), fill_label, dtype=torch.int64, device=device)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    for i in range(len(images)):
        # Scale: log-uniform so zooming in and out are equally likely.
        scale = math.exp(uniform(math.log(scale_range[0]), math.log(scale_range[1])))
        # Aspect: drawn only when asked for, so runs without it keep their random stream.
        aspect = (math.exp(uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
                  if aspect_range[0] != aspect_range[1] else aspect_range[0])
        h, w = labels.shape[1:]
        new_h, new_w = max(8, round(h * scale)), max(8, round(w * scale * aspect))
        image = TF.resize(images[i].permute(2, 0, 1), [new_h, new_w],
                          antialias=scale * min(1.0, aspect) < 1)
        label = TF.resize(labels[i][None], [new_h, new_w],
                          interpolation=TF.InterpolationMode.NEAREST_EXACT)[0]
        if roll_degrees:
            angle = uniform(-roll_degrees, roll_degrees)
            image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
            label = TF.rotate(label[None], angle, interpolation=TF.InterpolationMode.NEAREST,
                              fill=fill_label)[0]
        # Crop (pad with void where the scaled frame is smaller than the crop).
        top = int(uniform(0, max(0, new_h - crop_h)))
        left = int(uniform(0, max(0, new_w - crop_w)))
        image = image[:, top:top + crop_h, left:left + crop_w]
        label = label[top:top + crop_h, left:left + crop_w]
        if torch.rand((), generator=generator).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        # Photometric jitter on RGB order (saturation/hue formulas assume RGB).
        rgb = image.flip(0)
        spread, hue = 0.3 * jitter, 0.03 * jitter
        rgb = TF.adjust_brightness(rgb, uniform(1 - spread, 1 + spread))
        rgb = TF.adjust_contrast(rgb, uniform(1 - spread, 1 + spread))
        rgb = TF.adjust_saturation(rgb, uniform(1 - spread, 1 + spread))
        rgb = TF.adjust_hue(rgb, uniform(-hue, hue))
        ph, pw = label.shape
        out_images[i, :ph, :pw] = rgb.flip(0).permute(1, 2, 0)
        out_labels[i, :ph, :pw] = label.long()
    return out_images, out_labels


def iterate_batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches; the last partial batch is dropped (BatchNorm)."""
    order = torch.randperm(count, generator=generator)
    return [order[i:i + batch_size] for i in range(0, count - batch_size + 1, batch_size)]
