"""Robustness augmentation for training: night, weather, sensor and lens effects, and a
synthetic ego-vehicle hood, applied to whole batches on the training device.

Photometric effects leave the labels unchanged. They come from kornia's augmentation module
where it has them (rain, snow, motion blur, noise, JPEG, plasma shadows for lens dirt); night
glare, fog and cast shadows have no kornia op and are written here as a few tensor operations.

The hood is the one geometric effect: dashcams see their own car, which is not drivable, so a
hood-shaped region is painted at the bottom of some crops and labelled as the ego class, either
synthetic (`paint_hood`, or `paint_dashboard` for cameras behind the windscreen) or a real hood
cut from a labelled frame (`RealHoods`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F


def _uniform(shape: tuple[int, ...], low: float, high: float, device: torch.device,
             generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator).to(device)


def _draw(low: float, high: float, generator: torch.Generator | None) -> float:
    """One uniform number in [low, high) from the augmentation's generator."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def night(rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exposure drop, gamma, a sodium/LED colour cast, light glare, then sensor noise.

    rgb: float [B, 3, H, W] in 0..1. Glare comes before noise because a real sensor adds its
    noise to everything it records, lamps included.
    """
    b, _, h, w = rgb.shape
    device = rgb.device
    gamma = _uniform((b, 1, 1, 1), 1.5, 3.0, device, generator)
    gain = _uniform((b, 1, 1, 1), 0.25, 0.8, device, generator)
    cast = 1 + _uniform((b, 3, 1, 1), -0.2, 0.2, device, generator)
    dark = rgb.clamp(0, 1) ** gamma * gain * cast
    # Glare: a few bright Gaussian blobs (head-, tail- and street lights) in the upper 2/3.
    ys = torch.arange(h, device=device).view(1, h, 1).float()
    xs = torch.arange(w, device=device).view(1, 1, w).float()
    glare = torch.zeros((b, 1, h, w), device=device)
    for _ in range(3):
        cy = _uniform((b, 1, 1), 0.1 * h, 0.66 * h, device, generator)
        cx = _uniform((b, 1, 1), 0, w, device, generator)
        radius = _uniform((b, 1, 1), 0.01 * w, 0.05 * w, device, generator)
        strength = _uniform((b, 1, 1), 0.3, 1.0, device, generator)
        blob = strength * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius ** 2))
        glare = glare + blob[:, None]
    tint = torch.tensor([1.0, 0.9, 0.7], device=device).view(1, 3, 1, 1)
    dark = dark + glare * tint
    sigma = _uniform((b, 1, 1, 1), 0.01, 0.05, device, generator)
    noise = torch.randn(dark.shape, generator=generator).to(device)
    return (dark + sigma * noise).clamp(0, 1)


def fog(rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Atmospheric scattering I = J t + A (1 - t), with depth growing towards the horizon
    (rows near the top of a dashcam frame are far away), t = exp(-beta * depth)."""
    b, _, h, w = rgb.shape
    device = rgb.device
    rows = torch.linspace(1.0, 0.0, h, device=device).view(1, 1, h, 1)
    horizon = _uniform((b, 1, 1, 1), 0.3, 0.7, device, generator)
    depth = torch.clamp(rows / horizon, max=1.0)
    beta = _uniform((b, 1, 1, 1), 0.8, 2.5, device, generator)
    transmission = torch.exp(-beta * depth)
    airlight = _uniform((b, 1, 1, 1), 0.6, 0.95, device, generator)
    return rgb * transmission + airlight * (1 - transmission)


def shade(rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cast shadows: large soft-edged regions (trees, buildings) or a band across the whole
    frame (a bridge or underpass overhead), darkened and tinted blue, as shade is lit by the
    sky alone. Road in shade must stay road, not turn into pavement or car."""
    b, _, h, w = rgb.shape
    device = rgb.device
    # Blobs: a coarse random field, upsampled and cut at a random level with a soft edge.
    field = torch.rand((b, 1, 3, 4), generator=generator).to(device)
    field = torch.nn.functional.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)
    level = _uniform((b, 1, 1, 1), 0.35, 0.65, device, generator)
    blobs = torch.sigmoid((field - level) / 0.04)
    # Bands: rows between two random lines, every other frame.
    rows = torch.linspace(0, 1, h, device=device).view(1, 1, h, 1)
    top = _uniform((b, 1, 1, 1), 0.3, 0.8, device, generator)
    bottom = top + _uniform((b, 1, 1, 1), 0.15, 0.6, device, generator)
    band = torch.sigmoid((rows - top) / 0.02) * torch.sigmoid((bottom - rows) / 0.02)
    use_band = (torch.rand((b, 1, 1, 1), generator=generator) < 0.5).float().to(device)
    mask = torch.maximum(blobs * (1 - use_band), band.expand(b, 1, h, w) * use_band)
    depth = _uniform((b, 1, 1, 1), 0.25, 0.6, device, generator)
    tint = torch.tensor([0.9, 0.95, 1.1], device=device).view(1, 3, 1, 1)
    return (rgb * (1 - mask + mask * depth * tint)).clamp(0, 1)


class RobustAugment:
    """Applies each effect to a random subset of the batch; `probability` scales every share.

    Each kornia op runs with p=1 on the chosen frames only: several of them (JPEG, plasma,
    snow, noise) otherwise compute on the whole batch whatever their p, which made this step
    cost more than the training step itself.
    """

    def __init__(self, probability: float = 0.5):
        self.probability = probability
        self.effects = [
            (night, 0.5),
            (fog, 0.2),
            (shade, 0.3),
            (K.RandomRain(p=1.0, number_of_drops=(100, 500), drop_height=(4, 12),
                          drop_width=(1, 2)), 0.2),
            (K.RandomSnow(p=1.0, snow_coefficient=(0.1, 0.4), brightness=(1.5, 2.5)), 0.15),
            (K.RandomMotionBlur(kernel_size=(3, 11), angle=(-30.0, 30.0), direction=(-1.0, 1.0),
                                p=1.0), 0.25),
            (K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.5, 1.5), p=1.0), 0.15),
            (K.RandomPlasmaShadow(roughness=(0.3, 0.6), shade_intensity=(-0.4, -0.1),
                                  shade_quantity=(0.0, 0.3), p=1.0), 0.1),  # lens dirt
            (K.RandomGaussianNoise(std=0.04, p=1.0), 0.2),
            (K.RandomJPEG(jpeg_quality=(20.0, 60.0), p=1.0), 0.15),
        ]

    def __call__(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """rgb: float [B, 3, H, W] in 0..1 → same shape, labels untouched."""
        if self.probability <= 0:
            return rgb
        rgb = rgb.clone()
        for effect, share in self.effects:
            chosen = (torch.rand(len(rgb), generator=generator) < share * self.probability)
            if not chosen.any():
                continue
            chosen = chosen.to(rgb.device)
            if isinstance(effect, K.AugmentationBase2D):
                rgb[chosen] = effect(rgb[chosen]).clamp(0, 1)
            else:
                rgb[chosen] = effect(rgb[chosen], generator)
        return rgb


def _bottom_band_grid(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column positions in -1..1 [1, W] and row numbers [H, 1] for drawing a band's edge."""
    _, _, h, w = rgb.shape
    xs = torch.linspace(-1, 1, w, device=rgb.device).view(1, w)
    rows = torch.arange(h, device=rgb.device).view(h, 1).float()
    return xs, rows


def _chosen_frames(count: int, probability: float,
                   generator: torch.Generator | None) -> Iterator[int]:
    """Indices of the frames that get a band: one draw per frame, taken just before it is
    painted, so a painter's own draws follow its frame's (the random stream stays as it was)."""
    for i in range(count):
        if torch.rand((), generator=generator).item() < probability:
            yield i


def _soft_paste(frame: torch.Tensor, paint: torch.Tensor, rows: torch.Tensor, edge: torch.Tensor,
                blur: float) -> None:
    """Blend `paint` into `frame` below `edge` over about `blur` rows, in place: a band close to
    the lens is out of focus."""
    soft = ((rows - edge) / blur + 0.5).clamp(0, 1)
    frame.copy_(soft * paint + (1 - soft) * frame)


def paint_hood(rgb: torch.Tensor, labels: torch.Tensor, ego_id: int, probability: float,
               generator: torch.Generator | None = None) -> None:
    """Paint a synthetic ego-vehicle hood at the bottom of some frames, in place.

    The top edge is a wide arc (hoods bulge upwards in the middle), the paint a dark-to-light
    vertical gradient in a random car colour. Glossy paint seen from a dashcam mirrors what is
    *above* the car, so the reflection is the upper part of the frame (sky, buildings, lamps),
    flipped, squashed to the hood's height and blurred, never the road just ahead of the hood:
    a hood that mirrors road teaches the network that road-like texture at the bottom is ego.
    The edge gets a thin highlight and is softened, as a hood close to the lens is out of focus.
    Pixels under it get `ego_id`.
    """
    b, _, h, w = rgb.shape
    device = rgb.device
    xs, rows = _bottom_band_grid(rgb)

    for i in _chosen_frames(b, probability, generator):
        height = h * _draw(0.08, 0.30, generator)
        bulge = height * _draw(0.0, 0.6, generator)
        shift = _draw(-0.2, 0.2, generator)
        edge = h - height + bulge * ((xs - shift) ** 2).clamp(max=1)  # [1, w] top row per column
        mask = rows >= edge  # [h, w]
        if not mask.any():
            continue
        # Car paint: mostly black, grey, silver or white, sometimes a muted colour.
        luminance = 0.05 + 0.6 * torch.rand((), generator=generator).item() ** 2
        tint = 1 + 0.4 * (torch.rand(3, generator=generator) - 0.5)
        colour = (luminance * tint).to(device)
        depth = ((rows - edge) / max(height, 1.0)).clamp(0, 1)  # 0 at the edge, 1 at the bottom
        paint = colour.view(3, 1, 1) * (0.6 + 0.6 * depth)
        # Reflection of the frame's upper part, flipped and squashed into the hood's rows.
        band = max(2, int(height))
        source_rows = max(band, int(h * _draw(0.3, 0.6, generator)))
        mirror = rgb[i:i + 1, :, :source_rows].flip(2)
        mirror = torch.nn.functional.interpolate(mirror, size=(band, w), mode="bilinear",
                                                 align_corners=False)
        mirror = torch.nn.functional.avg_pool2d(mirror, 5, 1, 2)[0]
        reflection = torch.zeros_like(rgb[i])
        reflection[:, h - band:] = mirror
        paint = paint + _draw(0.2, 0.7, generator) * reflection
        # A highlight along the edge, then a soft (out-of-focus) transition into the scene.
        highlight = torch.exp(-((rows - edge) / 1.5) ** 2) * _draw(0.0, 0.5, generator)
        paint = paint + highlight
        _soft_paste(rgb[i], paint.clamp(0, 1), rows, edge, _draw(0.5, 3.0, generator))
        labels[i][mask] = ego_id


def paint_dashboard(rgb: torch.Tensor, labels: torch.Tensor, ego_id: int, probability: float,
                    generator: torch.Generator | None = None) -> None:
    """Paint a synthetic dashboard at the bottom of some RGB [B, 3, H, W] 0..1 frames, in place.

    Many dashcams sit behind the windscreen and see the dashboard rather than a glossy hood: a
    dark, matte, nearly flat band whose top edge is straight or gently curved either way, with
    blotchy low-frequency shading and grain. Its mirror image on the windscreen lies over the
    road just above the edge as a faint light haze; the road under that haze keeps its label,
    so the network learns that a veiled road is still road and only the band itself is ego.
    Pixels under the band get `ego_id`.
    """
    if probability <= 0:
        return  # draws nothing, so runs without dashboards keep their random stream
    b, _, h, w = rgb.shape
    device = rgb.device
    xs, rows = _bottom_band_grid(rgb)

    for i in _chosen_frames(b, probability, generator):
        # A nearly straight edge: a little tilt and a small sag or bulge.
        height = h * _draw(0.08, 0.32, generator)
        tilt = h * _draw(-0.04, 0.04, generator)
        sag = height * _draw(-0.3, 0.3, generator)
        edge = h - height + tilt * xs + sag * (xs ** 2 - 1 / 3)  # [1, w] top row per column
        mask = rows >= edge
        if not mask.any():
            continue
        # Dark plastic: near black (darker than asphalt in daylight, which a brighter band
        # taught to call ego), slightly tinted, lit unevenly, with sensor grain.
        luminance = 0.02 + 0.1 * torch.rand((), generator=generator).item() ** 2
        tint = 1 + 0.2 * (torch.rand(3, generator=generator) - 0.5)
        blotches = F.interpolate(torch.rand((1, 1, 4, 8), generator=generator), size=(h, w),
                                 mode="bicubic", align_corners=False)[0].to(device)
        grain = 0.015 * torch.randn((1, h, w), generator=generator).to(device)
        depth = ((rows - edge) / max(height, 1.0)).clamp(0, 1)  # 0 at the edge, 1 at the bottom
        lit_edge = 1 + _draw(-0.3, 0.6, generator) * (1 - depth)  # sun on the top surface
        paint = (luminance * tint.to(device).view(3, 1, 1) * lit_edge * (0.6 + 0.8 * blotches)
                 + grain).clamp(0, 1)
        # Its reflection on the windscreen: a light haze over the scene just above the edge.
        if torch.rand((), generator=generator).item() < 0.5:
            reach = h * _draw(0.05, 0.25, generator)
            haze = ((edge - rows) / reach).clamp(0, 1)
            haze = torch.where(rows < edge, 1 - haze, torch.zeros_like(haze))
            strength = _draw(0.1, 0.4, generator)
            glare = (0.3 + 0.7 * blotches) * strength * haze
            rgb[i] = (rgb[i] + glare).clamp(0, 1)
        # Its lip: a thin line, lit or in shade, along a crisp edge (the edge, not the band's
        # flatness, is what tells a dashboard from the road below it).
        lip = torch.exp(-((rows - edge) / 1.0) ** 2) * _draw(-0.15, 0.3, generator)
        paint = (paint + lip).clamp(0, 1)
        _soft_paste(rgb[i], paint, rows, edge, _draw(0.5, 1.5, generator))
        labels[i][mask] = ego_id


def _soft_region(labels: torch.Tensor, class_id: int) -> torch.Tensor | None:
    """A class's region of one label map [H, W] as a 0..1 mask [1, H, W] whose edge is softened
    over a few pixels (no sharper than a real kerb), or None where the class is absent."""
    region = (labels == class_id).float()[None, None]
    if region.sum() == 0:
        return None
    return F.avg_pool2d(region, 5, 1, 2)[0]


def recolour_road(rgb: torch.Tensor, labels: torch.Tensor, road_id: int, probability: float,
                  generator: torch.Generator | None = None) -> None:
    """Give the road of some RGB [B, 3, H, W] 0..1 crops another surface, in place; labels
    unchanged.

    Every CamVid road is dark asphalt and every pavement lighter paving, so brightness alone
    tells them apart there; elsewhere roads are pale concrete (a motorway under a bridge in the
    BDD samples: a third of its lanes called pavement) or fresh black asphalt. On most chosen
    crops the road's pixels are made paler and greyer under the scene's own light; on the rest
    they are darkened. The seam is softened over a few pixels.
    """
    if probability <= 0:
        return  # draws nothing, so runs without it keep their random stream
    for i in _chosen_frames(len(rgb), probability, generator):
        mask = _soft_region(labels[i], road_id)
        if mask is None:
            continue
        frame = rgb[i]
        if torch.rand((), generator=generator).item() < 0.7:
            # Concrete: paler under the same light (a gain, so a dusk scene stays dim), less
            # colourful, with a slight warm or cool cast.
            gain = _draw(1.3, 2.0, generator)
            cast = 1 + 0.08 * (torch.rand(3, generator=generator) - 0.5)
            grey = frame.mean(0, keepdim=True)
            surface = (grey + 0.4 * (frame - grey)) * gain * cast.to(frame.device).view(3, 1, 1)
        else:
            # Fresh or wet asphalt: darker, a little more contrast.
            surface = frame * _draw(0.45, 0.8, generator)
        frame.copy_(mask * surface.clamp(0, 1) + (1 - mask) * frame)


def recolour_classes(rgb: torch.Tensor, labels: torch.Tensor, class_ids: list[int],
                     probability: float, generator: torch.Generator | None = None) -> None:
    """Light each class's region of some RGB [B, 3, H, W] 0..1 crops differently, in place;
    labels unchanged.

    In three drives the colours of buildings, pavements and trees come with the drive's light
    and the town's materials; on another drive both differ. On a chosen crop each class present
    is, at even odds, given its own brightness (x0.6-1.6) and a slight colour cast, so the
    network has to know a building by its shape and place rather than its shade. Edges are
    softened as in `recolour_road`.
    """
    if probability <= 0:
        return  # draws nothing, so runs without it keep their random stream
    for i in _chosen_frames(len(rgb), probability, generator):
        frame = rgb[i]
        factor = torch.ones_like(frame)  # per-pixel gain [3, H, W]
        for class_id in class_ids:
            if torch.rand((), generator=generator).item() >= 0.5:
                continue
            mask = _soft_region(labels[i], class_id)
            if mask is None:
                continue
            gain = _draw(0.6, 1.6, generator) * (1 + 0.2 * (torch.rand(3, generator=generator) - 0.5))
            factor += mask * (gain.to(frame.device).view(3, 1, 1) - 1)
        frame.copy_((frame * factor).clamp(0, 1))


class RealHoods:
    """Real ego-vehicle hoods, cut from the training frames where the ego class is labelled
    (CamVid drive 0001TP), to paste at the bottom of other crops.

    One camera's hood in one colour would teach one hood; each paste is stretched to a random
    height, mirrored at random and recoloured (from near black to brighter than the original),
    so the network learns the real edge, blur and reflections rather than that car's paint.
    """

    HEIGHT_RANGE = (0.08, 0.30)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ego_id: int,
                 probability: float):
        """images: uint8 [N, H, W, 3] BGR; labels: [N, H, W] training labels; `probability`:
        the share of crops that get a hood."""
        self.ego_id, self.probability = ego_id, probability
        self.cuts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for image, label in zip(images, labels) if probability > 0 else ():
            rows = torch.nonzero((label == ego_id).any(1)).flatten()
            if len(rows) == 0:
                continue
            top = int(rows.min())
            rgb = image[top:].permute(2, 0, 1).flip(0).float() / 255
            self.cuts.append((rgb, label[top:] == ego_id))

    def __len__(self) -> int:
        return len(self.cuts)

    def expected_share(self) -> float:
        """Mean fraction of training pixels the pasted hoods cover (for the ego class weight)."""
        if not self.cuts:
            return 0.0
        fill = sum(mask.float().mean().item() for _, mask in self.cuts) / len(self.cuts)
        return self.probability * sum(self.HEIGHT_RANGE) / 2 * fill

    def paste(self, rgb: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator | None = None) -> None:
        """Paste a real hood at the bottom of some RGB [B, 3, H, W] 0..1 crops, in place;
        pixels under it get the ego class."""
        if not self.cuts:
            return
        b, _, h, w = rgb.shape

        for i in _chosen_frames(b, self.probability, generator):
            # A random cut, stretched to the crop's width and a random share of its height.
            cut, mask = self.cuts[int(torch.randint(len(self.cuts), (), generator=generator))]
            band = max(2, round(h * _draw(*self.HEIGHT_RANGE, generator)))
            cut = F.interpolate(cut[None].to(rgb.device), size=(band, w), mode="bilinear",
                                align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float().to(rgb.device), size=(band, w),
                                 mode="nearest")[0, 0].bool()
            if torch.rand((), generator=generator).item() < 0.5:
                cut, mask = cut.flip(-1), mask.flip(-1)
            # Another paint: overall brightness and a per-channel tint.
            tint = _draw(0.25, 1.3, generator) * (1 + 0.4 * (torch.rand(3, generator=generator) - 0.5))
            cut = (cut * tint.to(rgb.device).view(3, 1, 1)).clamp(0, 1)
            region = rgb[i, :, h - band:]
            region[:, mask] = cut[:, mask]
            labels[i, h - band:][mask] = self.ego_id


def expected_hood_share(probability: float) -> float:
    """Mean fraction of training pixels the hood covers (for its class weight)."""
    return probability * 0.19 * (1 - 0.3 / 2)  # mean height 19 %, the arc trims ~15 %


def expected_dashboard_share(probability: float) -> float:
    """Mean fraction of training pixels the synthetic dashboard covers (for the ego weight)."""
    return probability * 0.20  # mean height 20 %; the sag averages out across the width


class CopyPaste:
    """Rare objects cut from the training frames and pasted into other crops (Ghiasi et al.,
    "Simple Copy-Paste", 2021), so that pedestrians, bicyclists, signs, poles and fences are
    seen in many more places, sizes and scenes than the few frames that hold them.

    The bank holds every connected region of a rare class (above `min_pixels`) with its box;
    a paste picks the class first, then a region of it, so the rarest class is drawn as often
    as the others. The object keeps its height in the frame (bicyclists stay on the ground),
    its horizontal place and size are random.
    """

    SCALE_RANGE = (0.5, 2.0)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_ids: list[int],
                 probability: float, max_objects: int = 3, min_pixels: int = 150):
        """images: uint8 [N, H, W, 3] BGR; labels: [N, H, W] training labels; `probability`:
        the share of crops that get 1..`max_objects` pasted objects."""
        self.probability, self.max_objects = probability, max_objects
        self.bank: dict[int, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        frame_height = labels.shape[1]
        for image, label in zip(images, labels) if probability > 0 else ():
            for class_id in class_ids:
                mask = (label == class_id).numpy().astype("uint8")
                count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
                for index in range(1, count):
                    left, top, width, height, area = stats[index]
                    if area < min_pixels:
                        continue
                    box = (slice(top, top + height), slice(left, left + width))
                    region = torch.from_numpy(components[box] == index)
                    self.bank.setdefault(class_id, []).append(
                        (image[box].clone(), region, (top + height) / frame_height))

    def counts(self) -> dict[int, int]:
        """Regions in the bank per class id."""
        return {class_id: len(regions) for class_id, regions in self.bank.items()}

    def paste(self, images: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator | None = None) -> None:
        """Paste objects into uint8 BGR NHWC crops and their [B, H, W] labels, in place."""
        if not self.bank:
            return
        classes = sorted(self.bank)
        _, h, w, _ = images.shape
        for i in range(len(images)):
            if torch.rand((), generator=generator).item() >= self.probability:
                continue
            for _ in range(int(torch.randint(1, self.max_objects + 1, (), generator=generator))):
                # A class, then one of its regions, at a random size.
                class_id = classes[int(torch.randint(len(classes), (), generator=generator))]
                regions = self.bank[class_id]
                patch, region, bottom = regions[int(torch.randint(len(regions), (), generator=generator))]
                scale = math.exp(_draw(math.log(self.SCALE_RANGE[0]), math.log(self.SCALE_RANGE[1]),
                                       generator))
                ph = min(h, max(2, round(patch.shape[0] * scale)))
                pw = min(w, max(2, round(patch.shape[1] * scale)))
                # Resize with its mask; keep its bottom edge at the same share of the frame height.
                patch_chw = F.interpolate(patch.permute(2, 0, 1)[None].float(), size=(ph, pw),
                                          mode="bilinear", align_corners=False)[0]
                mask = F.interpolate(region[None, None].float(), size=(ph, pw), mode="nearest")[0, 0] > 0
                top = min(h - ph, max(0, round(bottom * h) - ph))
                left = int(torch.randint(0, w - pw + 1, (), generator=generator))
                if torch.rand((), generator=generator).item() < 0.5:
                    patch_chw, mask = patch_chw.flip(-1), mask.flip(-1)
                mask = mask.to(images.device)
                target = images[i, top:top + ph, left:left + pw]
                target[mask] = patch_chw.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).to(
                    images.device)[mask]
                labels[i, top:top + ph, left:left + pw][mask] = class_id


def class_mix(source_images: torch.Tensor, source_labels: torch.Tensor,
              target_images: torch.Tensor, target_labels: torch.Tensor, ignore: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix (Olsson et al., 2021), as DACS uses it for adaptation: half of the classes of
    each labelled source crop, drawn at random, are cut out where they stand and laid over an
    unlabelled target crop; the labels are the source's where pasted and the target's pseudo-
    labels elsewhere. Nothing moves, so every object keeps its size and place in the frame.

    images: uint8 [B, H, W, 3]; labels: int64 [B, H, W] of the same crop size. Returns new
    tensors.
    """
    mixed_images, mixed_labels = target_images.clone(), target_labels.clone()
    for i in range(len(source_images)):
        present = source_labels[i].unique()
        present = present[present != ignore]
        if len(present) == 0:
            continue
        # Half of the classes present (rounded up), in a random choice.
        order = torch.randperm(len(present), generator=generator)
        chosen = present[order[:(len(present) + 1) // 2].to(present.device)]
        mask = torch.isin(source_labels[i], chosen)
        mixed_images[i][mask] = source_images[i][mask]
        mixed_labels[i][mask] = source_labels[i][mask]
    return mixed_images, mixed_labels


class MixStyle:
    """Feature-statistics mixing (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021)
    on early layers, as forward hooks: in training, on a share of the steps, each crop's
    per-channel feature mean and standard deviation (its "style": lighting, colour, camera) are
    replaced by a random mix of its own and another crop's in the batch, so the later layers
    learn content that holds under another drive's look. Identity in eval mode and in the
    exported model (the hooks are not part of the network).

    The draws come from a NumPy generator reseeded every epoch from (seed, epoch), so a resumed
    run draws what the uninterrupted one would have.
    """

    ALPHA = 0.1  # Beta(0.1, 0.1): most mixes keep one crop's style nearly whole, as in the paper
    EPS = 1e-6

    def __init__(self, probability: float, seed: int):
        self.probability, self.seed = probability, seed
        self.rng = np.random.default_rng(seed)

    def start_epoch(self, epoch: int) -> None:
        """Reseed for this epoch (resume-safe)."""
        self.rng = np.random.default_rng((self.seed, epoch))

    def attach(self, modules: list[torch.nn.Module]) -> list[torch.utils.hooks.RemovableHandle]:
        """Mix the styles of each module's output; returns the hooks' handles."""
        return [module.register_forward_hook(self._mix) for module in modules]

    def _mix(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
             features: torch.Tensor) -> torch.Tensor | None:
        if not module.training or len(features) < 2 or self.rng.random() >= self.probability:
            return None  # the output as it is
        b = len(features)
        values = features.float()
        mean = values.mean((2, 3), keepdim=True).detach()
        std = (values.var((2, 3), keepdim=True) + self.EPS).sqrt().detach()
        share = torch.from_numpy(self.rng.beta(self.ALPHA, self.ALPHA, (b, 1, 1, 1))).to(values)
        partner = torch.from_numpy(self.rng.permutation(b)).to(features.device)
        mixed_mean = share * mean + (1 - share) * mean[partner]
        mixed_std = share * std + (1 - share) * std[partner]
        return ((values - mean) / std * mixed_std + mixed_mean).to(features.dtype)
