"""Fixed image corruptions for robustness scores: night, fog, rain, noise and blur.

Written with numpy and OpenCV, independently of the training augmentation (training/augment.py),
so a model is not scored on the very transforms it was trained with. Every corruption is
deterministic for a (seed, frame index) pair and has three severities, as ImageNet-C does.

    python -m training.evaluate --corrupt all
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Corruption = Callable[[np.ndarray, np.random.Generator, int], np.ndarray]


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def night(image: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    """Under-exposure with a cold cast, lamps, and the shot + read noise of a dark sensor."""
    gain, gamma, read_noise = [(0.5, 1.8, 0.02), (0.35, 2.2, 0.03), (0.22, 2.6, 0.045)][severity - 1]
    x = _to_float(image) ** gamma * gain
    x *= np.array([1.15, 1.0, 0.85], np.float32)  # BGR: a bluish night cast
    h, w = x.shape[:2]
    for _ in range(4):  # street lamps and oncoming headlights
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0.15 * h, 0.6 * h)))
        lamp = np.zeros((h, w), np.float32)
        cv2.circle(lamp, centre, int(rng.uniform(0.005, 0.015) * w) + 1, 1.0, -1)
        lamp = cv2.GaussianBlur(lamp, (0, 0), 0.02 * w)
        x += (lamp / max(lamp.max(), 1e-6) * rng.uniform(0.4, 0.9))[..., None]
    photons = 400.0 / severity  # fewer photons → stronger shot noise
    x = rng.poisson(np.clip(x, 0, 1) * photons).astype(np.float32) / photons
    x += rng.normal(0, read_noise, x.shape).astype(np.float32)
    return _to_uint8(x)


def fog(image: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    """Haze thicker towards the horizon, with patchy low-frequency density."""
    density = [0.5, 0.7, 0.85][severity - 1]
    h, w = image.shape[:2]
    patches = cv2.resize(rng.uniform(0.6, 1.0, (6, 8)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)
    rows = np.linspace(1.0, 0.3, h, dtype=np.float32)[:, None]
    haze = np.clip(density * patches * rows, 0, 0.95)[..., None]
    x = _to_float(image)
    return _to_uint8(x * (1 - haze) + 0.8 * haze)


def rain(image: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    """Slanted streaks, motion-blurred, over a duller, darker scene."""
    drops = [250, 500, 900][severity - 1]
    h, w = image.shape[:2]
    streaks = np.zeros((h, w), np.float32)
    angle = rng.uniform(-0.3, 0.3)
    for _ in range(drops):
        x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        length = rng.uniform(8, 20)
        x1, y1 = int(x0 + length * np.sin(angle)), int(y0 + length * np.cos(angle))
        cv2.line(streaks, (x0, y0), (x1, y1), float(rng.uniform(0.5, 1.0)), 1)
    streaks = cv2.blur(streaks, (3, 3))
    x = _to_float(image) * 0.8 + 0.05
    return _to_uint8(x * (1 - 0.6 * streaks[..., None]) + 0.75 * 0.6 * streaks[..., None])


def noise(image: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    """Additive Gaussian sensor noise."""
    sigma = [0.04, 0.08, 0.12][severity - 1]
    return _to_uint8(_to_float(image) + rng.normal(0, sigma, image.shape).astype(np.float32))


def blur(image: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    """Motion blur along a random direction (a shaking or panning camera)."""
    length = [7, 11, 15][severity - 1]
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


CORRUPTIONS: dict[str, Corruption] = {
    "night": night, "fog": fog, "rain": rain, "noise": noise, "blur": blur,
}


def corrupt_frames(images: np.ndarray, name: str, severity: int = 2, seed: int = 0) -> np.ndarray:
    """Apply one corruption to uint8 BGR frames [N, H, W, 3]; the same for the same seed."""
    corruption = CORRUPTIONS[name]
    return np.stack([corruption(image, np.random.default_rng([seed, index]), severity)
                     for index, image in enumerate(images)])
