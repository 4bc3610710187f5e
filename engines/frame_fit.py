"""Fitting frames to a model's input and its label maps back to the frames.

Two modes, as exports declare them (labels file "input": {"resize": ...}):
- "stretch" (the project's models, most segmentation exports): resize to the input size,
  aspect ratio not kept;
- "letterbox" (YOLO-family exports such as YOLOP): scale to fit, keep the aspect ratio, pad
  the rest with grey (114) centred; the padding is cut off the labels before they are scaled
  back to the frame.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from engines.base import Engine, EngineError

RESIZE_MODES = ("stretch", "letterbox")
PAD_VALUE = 114


def letterbox_box(frame_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the frame's content inside the letterboxed input."""
    frame_h, frame_w = frame_size
    input_h, input_w = input_size
    scale = min(input_w / frame_w, input_h / frame_h)
    height, width = max(1, round(frame_h * scale)), max(1, round(frame_w * scale))
    return (input_h - height) // 2, (input_w - width) // 2, height, width


def to_input(image: np.ndarray, input_size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """uint8 BGR frame → uint8 BGR at the model's (height, width)."""
    input_h, input_w = input_size
    if mode == "stretch":
        return cv2.resize(image, (input_w, input_h), interpolation=cv2.INTER_LINEAR)
    top, left, height, width = letterbox_box(image.shape[:2], input_size)
    fitted = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(fitted, top, input_h - height - top, left, input_w - width - left,
                              cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def content_labels(labels: np.ndarray, frame_size: tuple[int, int], input_size: tuple[int, int],
                   mode: str = "stretch") -> np.ndarray:
    """The part of a label map that covers the frame (all of it, unless letterboxed); the map
    may be coarser than the input, the box is scaled to it."""
    if mode == "stretch":
        return labels
    top, left, height, width = letterbox_box(frame_size, input_size)
    scale_y, scale_x = labels.shape[0] / input_size[0], labels.shape[1] / input_size[1]
    y0, x0 = int(top * scale_y), int(left * scale_x)
    return labels[y0:y0 + max(1, round(height * scale_y)), x0:x0 + max(1, round(width * scale_x))]


def fit_frames(images: np.ndarray, input_size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """uint8 BGR frames [N, H, W, 3] at the model's (height, width); the same array when they
    already are (a model exported with `training.export --height/--width` takes other sizes)."""
    if images.shape[1:3] == tuple(input_size):
        return images
    return np.stack([to_input(image, input_size, mode) for image in images])


def labels_to_frame(labels: np.ndarray, frame_size: tuple[int, int], input_size: tuple[int, int],
                    mode: str = "stretch") -> np.ndarray:
    """A label map of the model's input (or coarser) at the frame's (height, width): padding
    cut off, then nearest-neighbour, so models of different input sizes compare pixel by pixel."""
    labels = content_labels(labels, frame_size, input_size, mode)
    if labels.shape == tuple(frame_size):
        return labels
    return cv2.resize(labels.astype(np.uint8), frame_size[::-1], interpolation=cv2.INTER_NEAREST)


def engine_labels(engine: Engine, images: np.ndarray, batch_size: int = 1) -> Iterator[np.ndarray]:
    """The engine's class ids for uint8 BGR frames, `batch_size` frames a call: frames fitted
    to its input size, labels brought back to the frames' size (nearest), as the renderer does."""
    frame_size = images.shape[1:3]
    for start in range(0, len(images), batch_size):
        batch = fit_frames(images[start:start + batch_size], engine.info.input_size, engine.info.resize)
        for prediction in engine.infer(batch):
            yield labels_to_frame(prediction, frame_size, engine.info.input_size, engine.info.resize)


def segment(engine: Engine, images: np.ndarray) -> np.ndarray:
    """Class ids at the frames' own size: a uint8 BGR frame [H, W, 3] of any size → [H, W], or
    frames [N, H, W, 3] → [N, H, W]; one engine call a frame, as the app makes them."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4)
            and images.shape[-1] == 3 and min(images.shape[-3:-1]) > 0):
        got = (f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise EngineError(f"segment() takes a uint8 BGR frame [H, W, 3] or frames [N, H, W, 3] "
                          f"(what cv2.imread gives), got {got}; check that the image was read")
    if images.ndim == 3:
        return next(engine_labels(engine, images[None]))
    return np.stack(list(engine_labels(engine, images)))
