"""Frame sources: camera, network stream, video file, a folder of video clips, image sequence.

Each source opens eagerly (so bad input fails before any thread starts, with one clear line)
and then yields decoded BGR frames. Unreadable frames are skipped and counted; a camera that
stops delivering is reopened with back-off.
"""

from __future__ import annotations

import glob
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from engines.frames import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_files

log = logging.getLogger("source")

# A video whose decoder fails this many times in a row has ended (or is truncated).
MAX_CONSECUTIVE_DECODE_FAILURES = 25


class SourceError(RuntimeError):
    """An input that cannot be read; the message names the problem and the fix."""


@dataclass
class SourceStats:
    """Counters the capture thread reads; written only by the source's own generator."""

    corrupt: int = 0  # frames that could not be decoded and were skipped
    reopened: int = 0  # camera reconnects
    skipped_files: int = 0  # clips of a folder of videos that could not be read


class Source:
    """Base class: `frames()` yields BGR images until the input ends or `stop` is set."""

    live = False  # True for cameras: never paced, default --pace realtime
    name = "source"
    current_name: str | None = None  # file name of the frame last yielded (image inputs)
    frame_size: tuple[int, int] | None = None  # (height, width) when known before the run
    file: Path | None = None  # a video file that a second reader may open (to look ahead in it)

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
        self.path = self.file = Path(path)
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
        if ok and self._first is not None:
            self.frame_size = self._first.shape[:2]
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


class VideoListSource(Source):
    """Video files played one after another as one drive, in name order: a dashcam's folder
    of 1-3 minute segments. The frame rate and size are the first readable clip's; a clip that
    cannot be read is skipped with one warning; frames are named `<clip>_<frame>.png` for
    `--save DIR/` and `--save-masks`."""

    def __init__(self, spec: str, paths: list[Path], loop: bool = False):
        super().__init__()
        self.name, self.paths, self.loop = spec, paths, loop
        self._ready: dict[Path, VideoSource] = {}
        self._unreadable: set[Path] = set()  # warned about once, skipped on every pass
        # Open eagerly up to the first readable clip, so that a folder of damaged files fails
        # before any thread starts.
        for path in paths:
            if (clip := self._open(path)) is not None:
                self._ready[path] = clip
                break
        else:
            raise SourceError(f"none of the {len(paths)} videos in {spec} can be read; check them "
                              "with ffprobe, or re-encode them: ffmpeg -i IN -c:v libx264 OUT.mp4")
        self.fps, self.frame_size, self.file = clip.fps, clip.frame_size, clip.path
        log.info("%d clips in %s, played in name order as one drive at %.4g FPS", len(paths),
                 spec, self.fps)

    def _open(self, path: Path) -> VideoSource | None:
        try:
            clip = VideoSource(path)
        except SourceError as error:
            self._unreadable.add(path)
            self.stats.skipped_files += 1
            log.warning("skipping a clip: %s", error)
            return None
        clip.stats = self.stats  # its damaged frames count as this source's
        return clip

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        while not stop.is_set():
            played = 0
            for path in self.paths:
                if path in self._unreadable:
                    continue
                clip = self._ready.pop(path, None) or self._open(path)
                if clip is None:
                    continue
                try:
                    for number, image in enumerate(clip.frames(stop)):
                        self.current_name = f"{path.stem}_{number:06d}.png"
                        played += 1
                        yield image
                finally:
                    clip.close()
                if stop.is_set():
                    return
            if not self.loop or played == 0:
                return

    def close(self) -> None:
        for clip in self._ready.values():
            clip.close()
        self._ready.clear()


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


def block_signals() -> None:
    """Keep Ctrl-C and SIGTERM off the calling worker thread: the OS may deliver a signal to
    any thread, and one landing inside FFmpeg's blocking I/O on a worker (EINTR while PyAV
    runs Python callbacks) can crash the process; the main thread handles them."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
                  "srt://")


class StreamSource(Source):
    """A network camera or stream (RTSP, RTMP, HTTP MJPEG or HLS, UDP) read with PyAV.

    FFmpeg's own timeouts bound every blocking call: connecting, and each read, give up after
    `timeout` seconds, so a camera that accepts the connection and never sends fails with one
    line instead of hanging, and the capture thread sees the stop flag at least that often.
    A stream that drops after it has delivered frames is reopened with back-off.
    """

    live = True
    BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
    RECONNECTS = 5  # in a row without a frame, then the stream is given up

    def __init__(self, url: str, timeout: float = 5.0):
        super().__init__()
        self.url = url
        self.name = url
        self.timeout = timeout
        self.container, self._first = self._open_interruptibly()
        rate = self.container.streams.video[0].average_rate
        self.fps = float(rate) if rate and 1 <= float(rate) <= 1000 else 30.0

    def _open_interruptibly(self) -> tuple[Any, np.ndarray]:
        """_open on a helper thread: FFmpeg's blocking connect does not see Ctrl-C, but the
        main thread waiting here does, and the daemon helper dies with the process."""
        result: list = []
        done = threading.Event()

        def connect() -> None:
            block_signals()
            try:
                result.append(self._open())
            except Exception as error:  # noqa: BLE001 - re-raised on the caller's thread
                result.append(error)
            finally:
                done.set()

        helper = threading.Thread(target=connect, name="stream-connect", daemon=True)
        helper.start()
        # Waiting on an event, not join(): a Ctrl-C that interrupts Thread.join marks the
        # helper dead while it still runs inside FFmpeg (CPython #90882), and the exit path
        # then tears the interpreter down under it.
        while not done.wait(0.1):
            pass
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    def _open(self) -> tuple[Any, np.ndarray]:
        """Connect and decode the first frame, or SourceError within about `timeout`."""
        import av

        options = {"rtsp_transport": "tcp"} if self.url.startswith("rtsp") else {}
        try:
            container = av.open(self.url, options=options, timeout=(self.timeout, self.timeout))
        except (av.FFmpegError, OSError) as error:
            raise SourceError(f"stream {self.url} did not open within {self.timeout:g} s "
                              f"({_reason(error)}); check the URL and that the camera is on, or "
                              "raise --timeout") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"stream {self.url} carries no video")
        container.streams.video[0].thread_type = "AUTO"  # threaded decode
        try:
            first = next(self._decode(container))
        except (av.FFmpegError, OSError, StopIteration) as error:
            container.close()
            raise SourceError(f"stream {self.url} sent no frame within {self.timeout:g} s "
                              f"({_reason(error)}); the server accepted the connection but sends "
                              "nothing: check the stream path, or raise --timeout") from None
        return container, first

    @staticmethod
    def _decode(container: Any) -> Iterator[np.ndarray]:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        import av

        first, self._first = self._first, None
        if first is not None:
            yield first
        failures = 0
        while not stop.is_set():
            try:
                for image in self._decode(self.container):
                    failures = 0
                    yield image
                    if stop.is_set():
                        return
            except (av.FFmpegError, OSError):
                pass  # a read timed out or the connection dropped: reconnect below
            # The stream ended or dropped: reopen with back-off, give up after a few tries.
            self.container.close()
            while not stop.is_set():
                if failures >= self.RECONNECTS:
                    raise SourceError(f"stream {self.url} stopped sending and did not come back "
                                      f"after {failures} reconnects")
                if stop.wait(self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)]):
                    return
                failures += 1
                try:
                    self.container, first = self._open()
                except SourceError:
                    continue
                self.stats.reopened += 1
                yield first
                break

    def close(self) -> None:
        self.container.close()


def _reason(error: BaseException) -> str:
    """The useful part of an FFmpeg error (or 'timed out' when it only says so by errno)."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    # PyAV ends a call that ran past its timeout through FFmpeg's interrupt callback.
    timed_out = any(word in text for word in ("timed out", "ETIMEDOUT", "Immediate exit"))
    return "no answer in time" if timed_out else text


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
                self.current_name = path.name
                yield image
            if not self.loop or decoded == 0:
                return


def source_kind(spec: str) -> str:
    """Which kind of source an input spec names, the way videoSource(uri) reads a URI:
    camera index or /dev/videoN → camera; a stream URL → stream; a folder, a glob or an image
    file → images; any other path → video."""
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "camera"
    if spec.startswith(STREAM_SCHEMES):
        return "stream"
    path = Path(spec)
    if path.is_dir() or any(ch in spec for ch in "*?["):
        # A folder or glob of images is a sequence; one of only video clips is a drive.
        return "images" if list_files(spec, IMAGE_SUFFIXES) or not list_files(spec, VIDEO_SUFFIXES) \
            else "videos"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "images"
    return "video"


def open_source(video: str | None = None, camera: str | None = None, images: str | None = None,
                loop: bool = False, fps: float | None = None,
                camera_size: tuple[int, int] | None = None, timeout: float = 5.0,
                spec: str | None = None) -> Source:
    """Open exactly one source: an input spec (any kind, see source_kind) or one of the
    explicit --video/--camera/--images."""
    given = [x for x in (video, camera, images, spec) if x is not None]
    if len(given) != 1:
        raise SourceError("give exactly one input: INPUT (a camera index, device, file, folder, "
                          "glob or URL), --video FILE, --camera INDEX or --images GLOB")
    if spec is None:
        explicit = {"video": video, "images": images, "camera": camera}
        kind, spec = next((name, str(value)) for name, value in explicit.items() if value is not None)
        if kind in ("camera", "video") and spec.startswith(STREAM_SCHEMES):
            kind = "stream"  # a recorded stream's URL is a video too (videoSource reads both)
        if kind == "video" and (Path(spec).is_dir() or any(ch in spec for ch in "*?[")):
            kind = "videos"  # --video DIR or --video "clips/*.mp4": the clips in name order
    else:
        kind = source_kind(spec)
    options = {"loop": loop, "fps": fps, "camera_size": camera_size, "timeout": timeout}
    return SOURCES[kind](spec, **options)


# The registry: kind of input → how to open it (source_kind names the kind of a spec).
SOURCES: dict[str, Callable[..., Source]] = {
    "video": lambda spec, loop, **_: VideoSource(spec, loop=loop),
    "videos": lambda spec, loop, **_: open_video_list(spec, loop),
    "images": lambda spec, loop, fps, **_: ImageSource(spec, loop=loop, fps=fps or 30.0),
    "stream": lambda spec, timeout, **_: StreamSource(spec, timeout=timeout),
    "camera": lambda spec, camera_size, **_: CameraSource(spec, *(camera_size or (None, None))),
}


def open_video_list(spec: str, loop: bool) -> VideoListSource:
    """The video clips of a folder or glob, as one source."""
    paths = list_files(spec, VIDEO_SUFFIXES)
    if not paths:
        raise SourceError(f"no videos in {spec} (looked for {', '.join(sorted(VIDEO_SUFFIXES))}); "
                          "check the folder or quote the glob, e.g. --video \"clips/*.mp4\"")
    return VideoListSource(spec, paths, loop=loop)


def wait_until(deadline: float, stop: threading.Event) -> None:
    """Sleep until a monotonic deadline, waking early if stop is set."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        stop.wait(remaining)
