"""Where rendered frames go: sinks behind one interface, chosen by the output's form.

    sink = open_sink("out.mp4", fps=30)       # .mp4/.m4v/.mov/.mkv H.264, .avi MJPEG
    sink = open_sink("overlays/", fps=30)     # a folder: one PNG per frame, named after the input
    sink = open_sink("metrics.jsonl", fps=30) # one JSON line of telemetry per frame

The pipeline hands every sink each rendered frame (`write_frame`), its class ids
(`write_labels`; `MaskFolderSink`, `--save-masks`, writes those) and then the frame's telemetry
record (`write_record`), on the output thread, and closes them all on every exit path. The
window is the main-thread special case (`Window`); the web view is realtime.web.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
from fractions import Fraction
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from engines.files import OutputError, check_writable, write_atomically
from engines.labels import ClassInfo, labels_file_text
from realtime.render import upsample_labels

# Containers and how they are written: H.264 through PyAV (plays in browsers and phones), as
# fragmented MP4 so that a hard kill leaves a playable file; Motion-JPEG AVI through OpenCV.
H264_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
OPENCV_CONTAINERS = {".avi": "MJPG"}
VIDEO_SUFFIXES = (*H264_CONTAINERS, *OPENCV_CONTAINERS)
# A fragment is cut every 250 ms (and at keyframes) and written through at once, which bounds
# what a hard kill can lose to about a quarter of a second.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "250000",
                  "flush_packets": "1"}


class SinkError(OutputError):
    """An output that cannot be written; the message names the problem and the fix."""


def is_folder_spec(spec: str | Path) -> bool:
    """Whether an output names a folder (ends in a separator, or is one already)."""
    return str(spec).endswith(("/", os.sep)) or Path(spec).is_dir()


class Sink:
    """One output of the pipeline. Both hooks default to doing nothing, so a sink overrides
    what it uses; `write_frame` is timed as the pipeline's write stage, and the record it
    gets afterwards carries that time and the frame's end-to-end latency."""

    name = "sink"

    def write_frame(self, frame: np.ndarray, source_name: str | None) -> None:
        """A rendered BGR frame; `source_name` is the input image's file name, if any."""

    def write_labels(self, labels: np.ndarray, frame_size: tuple[int, int],
                     source_name: str | None) -> None:
        """The frame's class ids at the model's output resolution, the hood already labelled;
        `frame_size` is the frame's (height, width)."""

    def write_record(self, record: dict) -> None:
        """The frame's telemetry (index, capture time, stage times, drops)."""

    def close(self) -> None:
        """Finish the output; raise SinkError if that fails (the run then fails)."""


def even_size(width: int, height: int) -> tuple[int, int]:
    """H.264 in 4:2:0 needs even sides: odd ones get one replicated pixel row/column."""
    return width + width % 2, height + height % 2


class VideoSink(Sink):
    """Writes frames to a video file, opened on the first frame (its size is the video's).

    .mp4/.m4v/.mov/.mkv are H.264 through PyAV; MP4 is fragmented (a fragment per keyframe,
    one a second) and flushed as it goes, so a hard kill (SIGKILL, power loss) leaves a file
    that plays up to the last second. A later frame of another size (a folder of mixed
    images) is resized to the video's size and counted in `resized`. A write that fails (disk
    full) raises SinkError; what was written before stays playable.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise SinkError(f"--save {self.path}: unsupported container {suffix or '(none)'!r}; "
                            f"use one of {', '.join(sorted(VIDEO_SUFFIXES))}")
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            raise SinkError(f"video frame rate {fps} is not usable; give --fps between 0 and 1000")
        check_writable(self.path, "--save")
        self.fps = fps
        self.frames = 0
        self.resized = 0
        self.name = str(self.path)
        self.size: tuple[int, int] | None = None  # (width, height) of the source frames
        self.container = self.stream = self.writer = None
        self.complete_bytes = 0

    def _open(self, width: int, height: int) -> None:
        self.size = (width, height)
        suffix = self.path.suffix.lower()
        if suffix in OPENCV_CONTAINERS:
            fourcc = cv2.VideoWriter_fourcc(*OPENCV_CONTAINERS[suffix])
            self.writer = cv2.VideoWriter(str(self.path), cv2.CAP_FFMPEG, fourcc, self.fps,
                                          (width, height))
            if not self.writer.isOpened():
                raise SinkError(f"--save {self.path}: OpenCV's video writer did not open; use .mp4")
            return
        import av

        options = FRAGMENTED_MP4 if H264_CONTAINERS[suffix] == "mp4" else {"flush_packets": "1"}
        try:
            self.container = av.open(str(self.path), "w", format=H264_CONTAINERS[suffix],
                                     options=options)
        except OSError as error:
            raise SinkError(f"--save {self.path}: cannot create it ({error.strerror or error})") from None
        rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = even_size(width, height)
        self.stream.pix_fmt = "yuv420p"
        # zerolatency: no B-frames and no lookahead, so each frame is muxed as it comes.
        # ultrafast on one thread: 3.6 CPU ms a 960x540 frame against veryfast's 9.0 (measured
        # by realtime.bench_io), still smaller files than OpenCV's MPEG-4; one thread keeps
        # its cost on the render thread instead of taking cores from inference.
        self.stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23",
                               "g": str(max(1, round(self.fps))), "threads": "1"}

    def write_frame(self, frame: np.ndarray, source_name: str | None = None) -> None:
        height, width = frame.shape[:2]
        if self.size is None:
            self._open(width, height)
        if (width, height) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
            self.resized += 1
        try:
            if self.writer is not None:
                self.writer.write(frame)
            else:
                self._encode(frame)
        except OSError as error:
            self._abandon()
            kept = ("the file keeps the frames written before it and plays" if self.frames
                    else "no frame was written")
            raise SinkError(f"--save {self.path}: writing frame {self.frames} failed "
                            f"({error.strerror or error}); {kept}") from None
        self.frames += 1

    def _encode(self, frame: np.ndarray) -> None:
        import av

        width, height = self.stream.width, self.stream.height
        if frame.shape[1] != width or frame.shape[0] != height:
            frame = cv2.copyMakeBorder(frame, 0, height - frame.shape[0], 0, width - frame.shape[1],
                                       cv2.BORDER_REPLICATE)
        # BGR → YUV 4:2:0 by OpenCV rather than by FFmpeg's swscale inside the encoder: a
        # 960x540 frame's conversion + encode fell from 5.0 to 3.3 CPU ms here, and it decodes
        # closer to the input (PSNR 41.8 vs 39.4 dB on a CamVid frame).
        picture = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420),
                                             format="yuv420p")
        picture.pts = self.frames
        for packet in self.stream.encode(picture):
            self.container.mux(packet)
            # Packets are written through, a fragment at a time: this size ends a whole one.
            self.complete_bytes = os.path.getsize(self.path)

    def _abandon(self) -> None:
        """After a failed write: close without the trailer and cut the partial fragment off,
        so the file ends on a whole fragment and plays to its end."""
        container, self.container = self.container, None
        if container is None:
            return
        with contextlib.suppress(OSError):
            container.close()
        with contextlib.suppress(OSError):
            os.truncate(self.path, self.complete_bytes)

    def close(self) -> None:
        """Flush the encoder and finalise the container; a failure here is reported once."""
        writer, container, self.writer, self.container = self.writer, self.container, None, None
        if writer is not None:
            writer.release()
        if container is None:
            return
        failure: OSError | None = None
        try:
            for packet in self.stream.encode(None):
                container.mux(packet)
        except OSError as error:
            failure = error
        try:
            container.close()
        except OSError as error:
            failure = failure or error
        if failure is not None:
            raise SinkError(f"--save {self.path}: finishing the video failed "
                            f"({failure.strerror or failure}); the frames muxed before are in it")


class MetricsSink(Sink):
    """One JSON object per frame; each line is flushed so an interrupted run keeps them all."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = str(self.path)
        check_writable(self.path, "--metrics")
        try:
            self.file: IO[str] | None = open(self.path, "w", encoding="utf-8")
        except OSError as error:
            raise SinkError(f"--metrics {self.path}: cannot create it ({error.strerror}); choose "
                            "another path") from None
        self.records = 0
        self.complete_bytes = 0

    def write_record(self, record: dict) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.file.flush()
        except OSError as error:
            file, self.file = self.file, None
            with contextlib.suppress(OSError):  # the half line may not be flushable either
                file.close()
            with contextlib.suppress(OSError):  # drop the half-written line
                os.truncate(self.path, self.complete_bytes)
            raise SinkError(f"--metrics {self.path}: writing record {self.records} failed "
                            f"({error.strerror}); the {self.records} records before it are "
                            "complete") from None
        self.records += 1
        self.complete_bytes = self.file.tell()

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except OSError as error:
                raise SinkError(f"--metrics {self.path}: closing it failed ({error.strerror})") from None


class ImageFolderSink(Sink):
    """One PNG overlay per frame in a folder, named after the input image when the input is a
    folder or glob (frame_000123.png otherwise); each is written to a temporary name and
    renamed, so the folder never holds half a file."""

    def __init__(self, folder: str | Path, flag: str = "--save"):
        self.folder, self.flag = Path(folder), flag
        self.name = f"{self.folder}/"
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(f"{flag} {folder}: {self.folder} is a file; give a folder ending in /")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"{flag} {folder}: cannot create the folder ({error.strerror})") from None
        check_writable(self.folder / "probe.png", flag)
        self.frames = 0

    def write_frame(self, frame: np.ndarray, source_name: str | None = None) -> None:
        self._write_png(frame, source_name)

    def _write_png(self, image: np.ndarray, source_name: str | None) -> None:
        stem = Path(source_name).stem if source_name else f"frame_{self.frames:06d}"
        target = self.folder / f"{stem}.png"
        ok, encoded = cv2.imencode(".png", image)
        try:
            if not ok:
                raise OSError(0, "PNG encoding failed")
            write_atomically(target, encoded.tobytes())
        except OSError as error:
            raise SinkError(f"{self.flag} {self.folder}/: writing {target.name} failed "
                            f"({error.strerror}); the {self.frames} PNGs before it are complete") from None
        self.frames += 1


class MaskFolderSink(ImageFolderSink):
    """`--save-masks DIR/`: the class ids themselves, one single-channel PNG per frame (lossless,
    pixel value = class id), named like the overlays, with the class table beside them as
    `classes.json` (the `--labels` format), for evaluation or a downstream planner."""

    def __init__(self, folder: str | Path, classes: list[ClassInfo]):
        super().__init__(folder, "--save-masks")
        try:
            write_atomically(self.folder / "classes.json", labels_file_text(classes))
        except OSError as error:
            raise SinkError(f"--save-masks {folder}: writing classes.json failed "
                            f"({error.strerror})") from None

    def write_frame(self, frame: np.ndarray, source_name: str | None = None) -> None:
        """The overlay is not a mask: nothing to write."""

    def write_labels(self, labels: np.ndarray, frame_size: tuple[int, int],
                     source_name: str | None) -> None:
        # At the frame's own size, nearest-neighbour, so a mask lies exactly over its frame.
        self._write_png(upsample_labels(labels, *frame_size), source_name)


def open_sink(spec: str | Path, fps: float) -> Sink:
    """The sink an output names: a folder (ends in / or exists as one), a .jsonl metrics
    file, or a video container."""
    path = Path(spec)
    if is_folder_spec(spec):
        return ImageFolderSink(path)
    if path.suffix.lower() == ".jsonl":
        return MetricsSink(path)
    return VideoSink(path, fps)


def display_problem() -> str | None:
    """Why no window can be opened here, or None when one can: a display server that answers
    and an OpenCV build with HighGUI. A $DISPLAY naming a server that is gone would make Qt
    abort the process, so the socket is tried first."""
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and "NONE" in gui[0].upper():
        return "this OpenCV has no GUI support (opencv-python-headless?)"
    if not sys.platform.startswith("linux"):
        return None
    wayland = os.environ.get("WAYLAND_DISPLAY")
    if wayland:
        runtime = Path(os.environ.get("XDG_RUNTIME_DIR", "/run/user/%d" % os.getuid()))
        return None if (runtime / wayland).exists() else f"Wayland display {wayland} is not running"
    display = os.environ.get("DISPLAY")
    if not display:
        return "no display ($DISPLAY is not set)"
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return f"$DISPLAY={display} is not a display name"
    try:
        if host in ("", "unix"):
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(0.5)
                probe.connect(f"/tmp/.X11-unix/X{number}")
        else:
            socket.create_connection((host, 6000 + int(number)), timeout=0.5).close()
    except OSError:
        return f"the X display {display} does not answer"
    return None


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
        try:
            key = cv2.waitKey(1) & 0xFF
            closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:  # the window was closed with its × button (Qt: NULL guiReceiver)
            return True
        return key in self.QUIT_KEYS or closed

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:  # already destroyed by the window manager
            pass
