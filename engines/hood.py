"""The car's own hood in a fixed dashcam's view, found from the video itself.

A dashcam's hood (or dashboard) is the one thing in the lower part of the frame that does not
move while the car drives: its top edge keeps the same place *and* the same contrast sign in
every frame, while road texture, markings and shadows sweep past. `HoodFinder` averages the
vertical image gradient over frames that differ from each other (so a car waiting at a light
adds nothing) and calls a column's hood everything below the first edge in the bottom 40 % of
the frame whose averaged gradient keeps its sign (coherence: |mean| / mean of |gradient|) and
its strength, where such edges join into one smooth curve across a fifth of the width or more.

Measured on CamVid (tests/test_hood.py): drive 0001TP, the one that shows its hood, gives
coherence 1.0 along the hood's edge and a mask with IoU 0.90 against the labelled hood (3.2 % of
the frame); no 40-frame window of the three drives without a hood yields one (busy scenes make
no long coherent chain; a kerb the car drives along is coherent but fainter than
`min_edge_contrast`). Tested on one camera with a hood only: a glossy hood whose edge flips
contrast with the reflections is missed, and then the model's labels stand.

The labels under the mask become the ego class (or `NOT_SHOWN` for models without one), so
the overlay never paints the hood drivable. Stills carry no motion: each one would be its own
"video" and nothing is found, so image folders of unrelated photos are left as the model says.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from engines.labels import EGO_CLASS, ClassInfo

NOT_SHOWN = 255  # label for hood pixels of a model without an ego class (no colour, not scored)
GRID_WIDTH = 160  # frames are analysed at this width: the hood edge is a large structure


def ego_label(classes: list[ClassInfo]) -> int:
    """The label that hood pixels get: the model's ego class, else NOT_SHOWN."""
    return EGO_CLASS.id if any(c.name == EGO_CLASS.name for c in classes) else NOT_SHOWN


class HoodFinder:
    """Accumulates frames of one camera and answers where its hood is (see the module doc).

    Owned by one thread. `add` costs about 0.35 ms of CPU for a 960x540 frame (a 160-pixel-wide
    grey copy and one Sobel), skipped on all but every `every`-th frame, and on all but every
    `every * settled_every`-th once `min_frames` have counted (an answer exists; later frames only
    follow a camera that was moved); the boundary is recomputed every `refresh` counted frames.
    """

    def __init__(self, min_frames: int = 40, search_from: float = 0.6, min_coherence: float = 0.9,
                 min_contrast: float = 3.0, min_edge_contrast: float = 6.0, min_change: float = 6.0,
                 min_width: float = 0.2, max_step: int = 2, max_gap: int = 2, window: int = 300,
                 refresh: int = 10, every: int = 1, settled_every: int = 3):
        self.min_frames = min_frames  # counted frames before any answer
        self.search_from = search_from  # the hood edge lies below this fraction of the height
        self.min_coherence = min_coherence
        self.min_contrast = min_contrast  # grey levels per pixel across the averaged edge
        self.min_edge_contrast = min_edge_contrast  # the same, averaged along a whole hood edge
        self.min_change = min_change  # mean grey difference to the last counted frame
        self.min_width = min_width  # share of the columns a hood's edge must span unbroken
        self.max_step = max_step  # grid rows between the edges of neighbouring columns
        self.max_gap = max_gap  # columns without an edge inside one hood edge
        self.window = window  # counted frames in the running average (a camera may be moved)
        self.refresh = refresh
        self.every = max(1, every)  # look at every n-th frame offered (30 FPS needs no more than 15)
        self.settled_every = max(1, settled_every)
        self.offered = 0
        self.counted = 0
        self._last: np.ndarray | None = None
        self._mean_gradient: np.ndarray | None = None
        self._mean_magnitude: np.ndarray | None = None
        self._edge_rows: np.ndarray | None = None  # per grid column; -1 where no hood
        self._mask_cache: tuple[tuple[int, int], np.ndarray | None] | None = None

    def add(self, image: np.ndarray) -> bool:
        """Take one BGR frame; True when it counted (it differs enough from the last counted)."""
        self.offered += 1
        stride = self.every * (self.settled_every if self.counted >= self.min_frames else 1)
        if (self.offered - 1) % stride:
            return False
        height, width = image.shape[:2]
        grid_height = max(8, round(height * GRID_WIDTH / width))
        # Grey first, then an area average: a quarter cheaper than averaging three channels.
        grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (GRID_WIDTH, grid_height),
                          interpolation=cv2.INTER_AREA).astype(np.float32)
        # A new camera size restarts the estimate (a different camera, or a resized stream).
        if self._last is not None and self._last.shape != grey.shape:
            self.reset()
        # Only frames that moved count: a parked car would make everything look like hood.
        if self._last is not None and float(np.abs(grey - self._last).mean()) < self.min_change:
            return False
        self._last = grey
        gradient = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8.0  # grey levels per pixel
        self.counted += 1
        if self._mean_gradient is None:
            self._mean_gradient, self._mean_magnitude = gradient, np.abs(gradient)
        else:
            # A plain mean over the first `window` frames, a running average after that.
            rate = 1.0 / min(self.counted, self.window)
            self._mean_gradient += rate * (gradient - self._mean_gradient)
            self._mean_magnitude += rate * (np.abs(gradient) - self._mean_magnitude)
        if (self.counted - self.min_frames) % self.refresh == 0:
            self.settle()
        return True

    def settle(self) -> None:
        """Recompute the hood from the frames counted so far (`add` does it every `refresh`)."""
        if self.counted >= self.min_frames:
            self._edge_rows = self._find_edges()
            self._mask_cache = None

    def reset(self) -> None:
        self.offered = self.counted = 0
        self._last = self._mean_gradient = self._mean_magnitude = None
        self._edge_rows = None
        self._mask_cache = None

    def _find_edges(self) -> np.ndarray:
        """Per grid column, the row of the hood's top edge, or -1 where the column has none."""
        assert self._mean_gradient is not None and self._mean_magnitude is not None
        grid_height, grid_width = self._mean_gradient.shape
        top = int(self.search_from * grid_height)
        strength = np.abs(self._mean_gradient[top:])
        coherence = strength / np.maximum(self._mean_magnitude[top:], 1e-6)
        static_edge = (coherence >= self.min_coherence) & (strength >= self.min_contrast)
        has_edge = static_edge.any(axis=0)
        # The first static edge from the top: everything below it belongs to the car.
        rows = np.where(has_edge, static_edge.argmax(axis=0) + top, -1)
        # A hood's edge is one smooth curve: chain columns whose edges lie within `max_step`
        # rows of each other (across gaps of up to `max_gap` columns) and keep only chains
        # wide enough and, on average, sharp enough to be a hood; scattered coherent pixels
        # of a busy scene form no chain, and a kerb the car drives along stays fainter.
        columns = np.zeros(grid_width, bool)
        chain: list[int] = []
        for column in [*np.flatnonzero(rows >= 0), None]:
            if chain and (column is None or column - chain[-1] > self.max_gap + 1
                          or abs(rows[column] - rows[chain[-1]]) > self.max_step):
                contrast = np.mean([strength[rows[c] - top, c] for c in chain])
                if (chain[-1] - chain[0] + 1 >= self.min_width * grid_width
                        and contrast >= self.min_edge_contrast):
                    columns[chain[0]:chain[-1] + 1] = True
                chain = []
            if column is not None:
                chain.append(column)
        if not columns.any():
            return np.full(grid_width, -1)
        # Gap columns take their neighbours' row; a median smooths single-column outliers.
        known = np.flatnonzero(rows >= 0)
        filled = np.interp(np.arange(grid_width), known, rows[known])
        smooth = cv2.medianBlur(filled.astype(np.float32)[None], 5)[0]
        return np.where(columns, np.round(smooth), -1).astype(int)

    @property
    def found(self) -> bool:
        return self._edge_rows is not None and bool((self._edge_rows >= 0).any())

    def share(self) -> float:
        """The share of the frame the hood covers (0 when none was found)."""
        if not self.found:
            return 0.0
        assert self._edge_rows is not None and self._last is not None
        grid_height = self._last.shape[0]
        return float(np.where(self._edge_rows >= 0, grid_height - self._edge_rows, 0).sum()
                     / self._edge_rows.size / grid_height)

    def profile(self) -> np.ndarray | None:
        """Per grid column, the top of the hood as a fraction of the height (1.0 where the
        column has none); None when no hood was found."""
        if not self.found:
            return None
        assert self._edge_rows is not None and self._last is not None
        return np.where(self._edge_rows >= 0, self._edge_rows / self._last.shape[0], 1.0)

    def mask(self, height: int, width: int) -> np.ndarray | None:
        """The hood as a boolean mask of a height x width frame; None when none was found."""
        if self._mask_cache is None or self._mask_cache[0] != (height, width):
            profile = self.profile()
            self._mask_cache = ((height, width), None if profile is None else profile_mask(profile, height, width))
        return self._mask_cache[1]


def profile_mask(profile: np.ndarray | list[float], height: int, width: int) -> np.ndarray:
    """The boolean hood mask of a height x width frame from a per-column profile (the hood's
    top as a fraction of the height, 1.0 for none), interpolated between columns."""
    columns = np.asarray(profile, np.float32)
    tops = cv2.resize(columns[None], (width, 1), interpolation=cv2.INTER_LINEAR)[0] * height
    return np.arange(height)[:, None] >= np.round(tops)[None]


class FixedHood:
    """A hood the user measured once for their camera: the bottom `fraction` of every frame."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.counted = 0
        self.found = True
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def add(self, image: np.ndarray) -> bool:
        return False

    def share(self) -> float:
        return self.fraction

    def profile(self) -> np.ndarray:
        return np.full(GRID_WIDTH, 1.0 - self.fraction)

    def mask(self, height: int, width: int) -> np.ndarray:
        if (height, width) not in self._masks:
            self._masks[(height, width)] = profile_mask(self.profile(), height, width)
        return self._masks[(height, width)]


HOOD_HELP = ("the car's own hood, labelled ego and never painted: auto (found from the video's "
             "motion after a few seconds of driving; a file run with --pace all is looked at "
             "first, so from its first frame), off, or the bottom FRACTION of the frame (0.12)")


def hood_from_spec(spec: str, every: int = 1) -> HoodFinder | FixedHood | None:
    """`--hood auto | off | FRACTION` → a finder, a fixed band, or None; ValueError names the fix."""
    if spec == "auto":
        return HoodFinder(every=every)
    if spec == "off":
        return None
    try:
        fraction = float(spec)
    except ValueError:
        fraction = -1.0
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"--hood {spec!r}: use auto, off, or the share of the frame's height the "
                         "hood covers, between 0 and 0.5 (for example 0.12)")
    return FixedHood(fraction)


def apply_hood(labels: np.ndarray, hood: HoodFinder | FixedHood | None, value: int) -> np.ndarray:
    """`labels` with the hood's pixels set to `value` (a new array when there is a hood)."""
    mask = hood.mask(*labels.shape[:2]) if hood is not None else None
    return labels if mask is None else np.where(mask, np.asarray(value, labels.dtype), labels)


def find_hood(frames: list[np.ndarray], **settings: float) -> HoodFinder:
    """A HoodFinder fed with `frames` (for example frames sampled across a whole recording)."""
    finder = HoodFinder(**settings)
    for frame in frames:
        finder.add(frame)
    finder.settle()
    return finder


def scan_video(path: str, fps: float, seconds: float, rate: float = 10.0,
               enough: int | None = None, stop: threading.Event | None = None) -> HoodFinder:
    """A HoodFinder fed the first `seconds` of a video file at `rate` frames a second, stopping
    early once `enough` frames have counted (or when `stop` is set). Frames between those it
    looks at are only decoded (`grab`), not converted to BGR."""
    finder = HoodFinder()
    every = max(1, round(fps / rate))
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        for index in range(int(seconds * fps)):
            if stop is not None and stop.is_set():
                break
            ok, image = capture.read() if index % every == 0 else (capture.grab(), None)
            if not ok:
                break
            if image is not None:
                finder.add(image)
            if enough is not None and finder.counted >= enough:
                break
    finally:
        capture.release()
    finder.settle()
    return finder
