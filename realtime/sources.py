"""Frame sources: camera, video file, image sequence.

Each source opens eagerly (so bad input fails before any thread starts, with one clear line)
and then yields decoded BGR frames. Unreadable frames are skipped and counted; a camera that
stops delivering is reopened with back-off.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from engines.frames import IMAGE_SUFFIXES

# A video whose decoder fails this many times in a row has ended (or is truncated).
MAX_CONSECUTIVE_DECODE_FAILURES = 25


class SourceError(RuntimeError):
    """An input that cannot be read; the message names the problem and the fix."""


@dataclass
class SourceStats:
    """Counters the capture thread reads; written only by the source's own generator."""

    corrupt: int = 0  # frames that could not be decoded and were skipped
    reopened: int = 0  # camera reconnects


class Source:
    """Base class: `frames()` yields BGR images until the input ends or `stop` is set."""

    live = False  # True for cameras: never paced, default --pace realtime
    name = "source"

    def __init__(self) -> None:
        self.stats = SourceStats()
        self.fps = 30.0

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


class VideoSource(Source):
    """A video file decoded with OpenCV (FFmpeg)."""

    def __init__(self, path: str | Path, loop: bool = False):
        super().__init__()
        self.path = Path(path)
        self.name = str(self.path)
        self.loop = loop
        if not self.path.exists():
            raise SourceError(f"video {self.path} does not exist; check the --video path")
        if not self.path.is_file() or not os.access(self.path, os.R_OK):
            raise SourceError(f"video {self.path} is not a readable file; check the path and "
                              "its permissions")
        self.capture = self._open()
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 1000 else 30.0
        self.frame_count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, self._first = self.capture.read()
        if not ok or self._first is None:
            raise SourceError(f"video {self.path} has no decodable frames (empty or damaged "
                              "file); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise SourceError(f"video {self.path} could not be opened: not a video file or an "
                              "unsupported codec; convert it with ffmpeg -i IN -c:v libx264 OUT.mp4")
        return capture

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        first, self._first = self._first, None
        if first is not None:
            yield first
        while not stop.is_set():
            failures = 0
            while not stop.is_set():
                ok, image = self.capture.read()
                if ok and image is not None:
                    failures = 0
                    yield image
                    continue
                # A failed read is either the end or a damaged frame: the decoder position
                # tells them apart when the container knows its length.
                position = int(self.capture.get(cv2.CAP_PROP_POS_FRAMES) or 0)
                if failures >= MAX_CONSECUTIVE_DECODE_FAILURES or not (0 < position < self.frame_count):
                    break
                failures += 1
                self.stats.corrupt += 1
                self.capture.grab()
            if not self.loop:
                return
            self.capture.release()
            self.capture = self._open()

    def close(self) -> None:
        self.capture.release()


class CameraSource(Source):
    """A live camera by index (0) or device path (/dev/video0, or a stream URL)."""

    live = True
    BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)

    def __init__(self, device: str | int, width: int | None = None, height: int | None = None):
        super().__init__()
        self.device = int(device) if str(device).isdigit() else str(device)
        self.name = f"camera {self.device}"
        self.size = (width, height)
        self.capture = self._open()
        if not self.capture.isOpened():
            raise SourceError(f"camera {self.device} did not open; check the index or device path "
                              "(ls /dev/video*), its permissions, and that no other program holds it")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 1000 else 30.0

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.device)
        if capture.isOpened():
            # Drivers queue a few frames by default; one buffer keeps the newest frame newest.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            if self.size[0] and self.size[1]:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        return capture

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        attempt = 0
        while not stop.is_set():
            ok, image = self.capture.read()
            if ok and image is not None:
                attempt = 0
                yield image
                continue
            # The camera stopped delivering (unplugged, driver hiccup): reopen with back-off.
            self.capture.release()
            delay = self.BACKOFF_S[min(attempt, len(self.BACKOFF_S) - 1)]
            attempt += 1
            if stop.wait(delay):
                return
            self.capture = self._open()
            self.stats.reopened += 1

    def close(self) -> None:
        self.capture.release()


class ImageSource(Source):
    """A folder of images, or a glob pattern, in sorted order."""

    def __init__(self, pattern: str | Path, loop: bool = False, fps: float = 30.0):
        super().__init__()
        self.name = str(pattern)
        self.loop = loop
        self.fps = fps
        path = Path(pattern)
        if path.is_dir():
            self.paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            self.paths = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
        if not self.paths:
            raise SourceError(f"no images match {pattern!r}; check the folder or quote the glob, "
                              "e.g. --images \"frames/*.png\"")

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        while not stop.is_set():
            decoded = 0
            for path in self.paths:
                if stop.is_set():
                    return
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    self.stats.corrupt += 1
                    continue
                decoded += 1
                yield image
            if not self.loop or decoded == 0:
                return


def open_source(video: str | None = None, camera: str | None = None, images: str | None = None,
                loop: bool = False, fps: float | None = None,
                camera_size: tuple[int, int] | None = None) -> Source:
    """Open exactly one of the three kinds of source."""
    if sum(x is not None for x in (video, camera, images)) != 1:
        raise SourceError("give exactly one input: --video FILE, --camera INDEX or --images GLOB")
    if video is not None:
        return VideoSource(video, loop=loop)
    if images is not None:
        return ImageSource(images, loop=loop, fps=fps or 30.0)
    width, height = camera_size or (None, None)
    return CameraSource(camera, width, height)


def wait_until(deadline: float, stop: threading.Event) -> None:
    """Sleep until a monotonic deadline, waking early if stop is set."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        stop.wait(remaining)
