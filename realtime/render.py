"""Overlay rendering: pure functions on numpy arrays (no state, no threads, no windows)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.labels import ClassInfo

CLASS_SELECTIONS = {
    "drivable": {"drivable"},
    "objects": {"object"},
    "background": {"background"},
    "all": {"drivable", "object", "background"},
}


def parse_class_selection(text: str, classes: list[ClassInfo]) -> list[int]:
    """`--classes drivable,objects` (groups) or class names → ids to overlay."""
    names = {c.name.lower(): c.id for c in classes}
    chosen: set[int] = set()
    for token in (t.strip().lower() for t in text.split(",") if t.strip()):
        if token in CLASS_SELECTIONS:
            chosen |= {c.id for c in classes if c.group in CLASS_SELECTIONS[token]}
        elif token in names:
            chosen.add(names[token])
        else:
            raise ValueError(f"--classes: unknown entry {token!r}; use drivable, objects, "
                             f"background, all or class names ({', '.join(c.name for c in classes)})")
    return sorted(chosen)


@dataclass(frozen=True)
class Palette:
    """Lookup tables built once per run: BGR colour and 'shown' flag for every label value."""

    colors: np.ndarray  # [256, 1, 3] uint8 BGR, for cv2.LUT
    shown: np.ndarray  # [256] uint8 (255 where the class is overlaid)
    outline_ids: tuple[int, ...]  # drivable classes whose region gets an outline

    @classmethod
    def build(cls, classes: list[ClassInfo], shown_ids: list[int]) -> "Palette":
        colors = np.zeros((256, 1, 3), np.uint8)
        shown = np.zeros(256, np.uint8)
        for info in classes:
            if info.id < 256:
                colors[info.id, 0] = info.color[::-1]  # RGB table → BGR image
        shown[[i for i in shown_ids if i < 256]] = 255
        outline = tuple(c.id for c in classes if c.group == "drivable" and c.id in shown_ids)
        return cls(colors, shown, outline)


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map (never interpolates between class ids)."""
    labels = labels.astype(np.uint8, copy=False)
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """Label map [H, W] → BGR colour image [H, W, 3]."""
    return cv2.LUT(cv2.merge([labels, labels, labels]), palette.colors)


def overlay(frame: np.ndarray, labels: np.ndarray, palette: Palette, alpha: float = 0.5,
            outline: bool = True) -> np.ndarray:
    """Blend class colours into the frame where a shown class is, at the frame's resolution.

    frame: BGR [H, W, 3]; labels: class ids [h, w] at any resolution. Returns a new image;
    pixels of classes that are not shown keep the frame's values exactly.
    """
    height, width = frame.shape[:2]
    full = upsample_labels(labels, height, width)
    out = frame.copy()
    if alpha > 0:
        blended = cv2.addWeighted(frame, 1.0 - alpha, colorize(full, palette), alpha, 0.0)
        mask = cv2.LUT(full, palette.shown)
        cv2.copyTo(blended, mask, out)
    if outline and palette.outline_ids:
        # Contours on the small label map, scaled up: cheaper than on the full frame.
        region = np.isin(labels, palette.outline_ids).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            scale = np.array([width / labels.shape[1], height / labels.shape[0]])
            scaled = [(c.astype(np.float32) * scale).astype(np.int32) for c in contours]
            color = tuple(int(v) for v in palette.colors[palette.outline_ids[0], 0])
            bright = tuple(min(255, int(v * 1.6) + 40) for v in color)
            cv2.drawContours(out, scaled, -1, bright, max(1, width // 480), cv2.LINE_AA)
    return out


def draw_hud(image: np.ndarray, lines: list[str]) -> None:
    """Telemetry text, top-left, on a dark box so it stays legible on any scene (in place)."""
    if not lines:
        return
    scale = max(0.4, image.shape[1] / 1600)
    thickness = 1
    sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0] for line in lines]
    line_height = max(h for _, h in sizes) + int(8 * scale + 4)
    box_w = max(w for w, _ in sizes) + 12
    box_h = line_height * len(lines) + 6
    box_w, box_h = min(box_w, image.shape[1]), min(box_h, image.shape[0])
    region = image[:box_h, :box_w]
    region[:] = (region * 0.35).astype(np.uint8)
    for row, line in enumerate(lines):
        y = (row + 1) * line_height
        cv2.putText(image, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)


def make_legend(classes: list[ClassInfo], shown_ids: list[int], frame_width: int) -> np.ndarray:
    """A small BGR image listing the overlaid classes with their colours (built once)."""
    scale = max(0.4, frame_width / 1600)
    chosen = [c for c in classes if c.id in shown_ids]
    if not chosen:
        return np.zeros((0, 0, 3), np.uint8)
    row_h = int(22 * scale / 0.5)
    text_w = max(cv2.getTextSize(c.name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for c in chosen)
    legend = np.full((row_h * len(chosen) + 6, row_h + text_w + 16, 3), 32, np.uint8)
    for row, info in enumerate(chosen):
        y0 = 3 + row * row_h
        cv2.rectangle(legend, (4, y0 + 3), (row_h - 2, y0 + row_h - 3), info.color[::-1], -1)
        cv2.putText(legend, info.name, (row_h + 4, y0 + row_h - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (255, 255, 255), 1, cv2.LINE_AA)
    return legend


def paste_legend(image: np.ndarray, legend: np.ndarray) -> None:
    """Copy the legend into the top-right corner, cropped if the frame is smaller (in place)."""
    h = min(legend.shape[0], image.shape[0])
    w = min(legend.shape[1], image.shape[1])
    if h and w:
        image[:h, image.shape[1] - w:] = legend[:h, :w]
