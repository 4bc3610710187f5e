"""Where rendered frames go: a video file, a metrics file (JSON lines), a window."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO

import cv2
import numpy as np

# Containers OpenCV's FFmpeg writer handles everywhere, with a codec each supports.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


class SinkError(RuntimeError):
    """An output that cannot be written; the message names the problem and the fix."""


def check_writable(path: Path, what: str) -> None:
    """Fail before the run starts when an output cannot be created."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise SinkError(f"{what} {path}: folder {parent} does not exist; create it or choose "
                        "another path")
    if not os.access(parent, os.W_OK):
        raise SinkError(f"{what} {path}: folder {parent} is not writable; choose another path")
    if path.is_dir():
        raise SinkError(f"{what} {path} is a folder; give a file name")


class VideoSink:
    """Writes frames to a video file; opened on the first frame (its size is the frame's).

    The container is finalised in close(), which the pipeline calls on every exit path
    (end, q/Esc, Ctrl-C, SIGTERM, a failing thread), so the file always plays. Only a hard
    kill (SIGKILL, power loss) skips it: an .mp4 then lacks its index, an .mkv still plays up
    to the last frame written, so record to .mkv where that matters.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise SinkError(f"--save {self.path}: unsupported container {suffix or '(none)'!r}; "
                            f"use one of {', '.join(sorted(FOURCC))}")
        check_writable(self.path, "--save")
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            height, width = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.path), cv2.CAP_FFMPEG, fourcc, self.fps,
                                          (width, height))
            if not self.writer.isOpened():
                raise SinkError(f"--save {self.path}: the video writer did not open; try .avi")
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class MetricsSink:
    """One JSON object per frame; each line is flushed so an interrupted run keeps them all."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        check_writable(self.path, "--metrics")
        self.file: IO[str] | None = open(self.path, "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def display_available() -> bool:
    """Whether a window can be opened: a display server and an OpenCV build with HighGUI."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return False
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    return not gui or "NONE" not in gui[0].upper()


class Window:
    """An OpenCV window; must be driven from one thread (the pipeline uses the main thread)."""

    QUIT_KEYS = {ord("q"), ord("Q"), 27}

    def __init__(self, title: str):
        self.title = title
        self.sized = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)

    def show(self, frame: np.ndarray | None) -> bool:
        """Show a frame (or just pump events); returns True when the user asked to quit."""
        if frame is not None:
            if not self.sized:  # open at the video's size (capped), still resizable
                height, width = frame.shape[:2]
                scale = min(1.0, 1280 / width, 800 / height)
                cv2.resizeWindow(self.title, int(width * scale), int(height * scale))
                self.sized = True
            cv2.imshow(self.title, frame)
        key = cv2.waitKey(1) & 0xFF
        closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        return key in self.QUIT_KEYS or closed

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)
