"""Sample frames (for INT8 calibration, or training's --adapt): taken evenly and
deterministically from a video, a folder or a glob.

Here rather than in `calibration` because an INT8 engine build needs them on a deployment box
that has neither the calibration tools nor the live application.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import cv2
import numpy as np

from engines.base import EngineError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Containers a dashcam or phone writes that FFmpeg reads (how a folder of clips is recognised).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts"})


class FramesError(EngineError):
    """Frames that cannot be read; the message names the source and the fix."""


def _evenly(total: int, count: int) -> list[int]:
    """`count` indices spread over [0, total) including both ends, without repeats."""
    if total <= count:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def list_files(source: str | Path, suffixes: frozenset[str]) -> list[Path]:
    """The files of a folder, or those a glob matches, with one of `suffixes`, sorted by name."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    return sorted(Path(p) for p in glob.glob(str(source))
                  if Path(p).suffix.lower() in suffixes and Path(p).is_file())


def list_images(source: str | Path) -> list[Path]:
    """The image files of a folder, or those a glob matches, sorted by name."""
    return list_files(source, IMAGE_SUFFIXES)


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES


def listed_names(source: str | Path | None) -> set[str]:
    """File names of the images a folder or glob lists; a video (or nothing) lists none."""
    if source is None or _is_video(Path(source)):
        return set()
    return {image.name for image in list_images(source)}


def sample_frames(source: str | Path, count: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 BGR [N, H, W, 3] at the model's input size (height, width).

    Videos are read sequentially (seeking is not frame-exact in every container) and the
    chosen indices are kept, so the same file always yields the same frames.
    """
    height, width = size
    path = Path(source)
    if _is_video(path):
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise FramesError(f"{path} is not a readable video")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if total <= 0:  # unknown length: count by decoding
            total = sum(1 for _ in iter(lambda: capture.grab() or None, None))
            capture.release()
            capture = cv2.VideoCapture(str(path))
        wanted = set(_evenly(total, count))
        frames = []
        for index in range(total):
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                frames.append(cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR))
        capture.release()
    else:
        paths = list_images(source)
        frames = [cv2.imread(str(paths[i]), cv2.IMREAD_COLOR) for i in _evenly(len(paths), count)]
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
                  for f in frames if f is not None]
    if not frames:
        raise FramesError(f"no frames could be read from {source!r}; pass a video, "
                          "an image folder or a quoted glob")
    return np.stack(frames)


def frames_digest(frames: np.ndarray) -> str:
    """Identity of a calibration set (part of the calibration cache key)."""
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()[:16]
