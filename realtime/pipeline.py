"""The live pipeline: capture thread → inference thread(s) → render thread → output thread
(→ window on main).

Threading rules (../shared/DESIGN.md):
- live pacing hands frames over through a one-slot mailbox: the newest frame replaces an
  unread one and the replacement is counted as a drop, so inference never works on stale
  frames; `--pace all` uses a small bounded queue with back-pressure instead (nothing dropped);
- every frame carries its index and a monotonic capture timestamp, so end-to-end latency is
  measured at the moment the frame is written or handed to the window;
- a failure in any thread stops all of them and is re-raised on the main thread; the source,
  the sinks and the engine are closed on the main thread after the workers have stopped, on
  every exit path (the pipeline owns what it is given).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator

import numpy as np

from engines.base import Engine, EngineError
from engines.frame_fit import content_labels, to_input
from engines.hood import FixedHood, HoodFinder, apply_hood, ego_label, hood_from_spec, scan_video
from realtime.render import Palette, draw_hud, make_legend, overlay, paste_legend
from realtime.sinks import Sink, SinkError, Window
from realtime.sources import Source, SourceError, block_signals, wait_until
from realtime.telemetry import RateMeter, RunRecorder, StageTimer, name_os_thread

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often blocked threads look at the stop flag: bounds shutdown time
# --hood auto on a file written whole reads this much of its start first, at 10 frames a
# second, stopping once this many frames moved (960x540: 180 frames decoded, 1.5-1.7 CPU s on an
# AVX2-only 2-core EPYC), before the first frame is drawn.
LOOKAHEAD_SECONDS = 10.0
LOOKAHEAD_COUNTED = 60
END = object()  # end-of-stream marker passed down the channels
# A thread coming back from OpenCV, FFmpeg or the runtime (which work without the GIL) waits
# until the thread holding the GIL is asked to let it go, which Python does every switch
# interval: 5 ms by default, most of a frame's budget at 100+ FPS. Measured with 0.5 ms
# (session 26, 960x540, 2 cores, OpenVINO bf16, alternated runs): cores busy 0.971-0.979
# instead of 0.958-0.974, steady FPS up 1-3.5 %, the share of the machine bound up in every
# clean benchmark round (docs/cpu-history.md, "The pipeline against the machine bound").
SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    """Let threads hand the GIL over every `seconds` while the block runs (a process-wide
    setting: the previous value is restored after)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def measured(value: float) -> str:
    """A HUD figure, or dashes until there is one (a rate needs two frames)."""
    return f"{value:5.1f}" if value > 0 else "   --"


class StopReason(str, Enum):
    """Why a run ended; the value is what the summary and the log line say."""

    END_OF_INPUT = "end of input"
    QUIT_KEY = "quit key"
    INTERRUPTED = "interrupted"  # Ctrl-C
    TERMINATED = "SIGTERM"
    FAILED = "failed"  # a worker thread raised; PipelineError names the stage


class PipelineError(RuntimeError):
    """A worker thread failed; `stage` names it and `__cause__` is the original exception."""

    def __init__(self, stage: str, error: BaseException, trace: str):
        super().__init__(f"{stage} thread failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.trace = trace


class LatestSlot:
    """One-slot mailbox: put() replaces an unread item (a drop) and never blocks."""

    def __init__(self) -> None:
        self._item: Any = None
        self._full = False
        self._cond = threading.Condition()

    def put(self, item: Any, stop: threading.Event) -> bool:
        """Store the item; returns True when it replaced one that was never read."""
        with self._cond:
            replaced = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def get(self, timeout: float) -> Any:
        with self._cond:
            if not self._full and not self._cond.wait(timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item


class BoundedChannel:
    """Small FIFO with back-pressure: put() blocks while full, waking to check `stop`."""

    def __init__(self, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)

    def put(self, item: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return False
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Any:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


@dataclass
class Packet:
    """One frame on its way through the pipeline."""

    index: int
    captured_at: float  # time.perf_counter() when decoded (monotonic)
    image: np.ndarray  # original resolution, BGR
    model_input: np.ndarray  # [1, h, w, 3] at the engine's input size
    dropped: int  # frames dropped by the mailbox so far
    corrupt: int  # undecodable frames skipped so far
    capture_fps: float
    timings: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    source_name: str | None = None  # the input image's file name, or <clip>_<frame>.png
    sequence: int = 0  # order in which inference took the frame (render restores this order)


@dataclass
class RenderState:
    """What the render thread carries from frame to frame (owned by that thread alone)."""

    infer_meter: RateMeter = field(default_factory=RateMeter)
    legend: np.ndarray | None = None
    hood: HoodFinder | FixedHood | None = None
    hood_reported: float = 0.0  # the hood share last logged


@dataclass
class PipelineOptions:
    pace: str = "all"  # "realtime": paced at the source FPS, newest frame wins; "all": every frame
    max_frames: int | None = None
    alpha: float = 0.5
    shown_ids: list[int] = field(default_factory=list)
    outline: bool = True
    hud: bool = True
    legend: bool = True
    warmup: int = 5
    queue_size: int = 4
    workers: int = 1  # inference threads; >1 needs an engine whose infer() is thread-safe
    hood: str = "auto"  # the car's own hood: auto, off or a bottom fraction (engines.hood)


class Pipeline:
    """Runs source → engine → overlay → sinks on capture, inference, render and output threads
    until the input ends or stop()."""

    def __init__(self, source: Source, engine: Engine, options: PipelineOptions,
                 sinks: list[Sink] | tuple[Sink, ...] = (), window: Window | None = None):
        self.source, self.engine, self.options = source, engine, options
        self.sinks, self.window = list(sinks), window
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # set once every inference thread has warmed up
        self.finished = threading.Event()  # set by the output thread after the last frame
        self.stop_reason: StopReason | None = None
        self.palette = Palette.build(engine.info.classes, options.shown_ids)
        self.max_class_id = max(c.id for c in engine.info.classes)
        self.ego_label = ego_label(engine.info.classes)
        self.hood: HoodFinder | FixedHood | None = None  # the render thread's, kept for the summary
        self.frames_in = self.channel_in()
        self.results = BoundedChannel(2)
        self.rendered = BoundedChannel(2)
        # Written by the output thread alone, read by the render thread for the HUD (floats).
        self.latency_ms = 0.0
        self.display_fps = 0.0
        self.to_window = LatestSlot()
        self.recorder = RunRecorder()
        self.dropped = 0
        self._error: PipelineError | None = None
        self._error_lock = threading.Lock()
        # Inference threads share these. One lock is held while a thread waits for a frame (the
        # take and its sequence number are one step); the counters have their own, never held
        # while waiting: Python's locks are not fair, and a thread that takes the lock back
        # every poll could starve the other for seconds (seen: 60 s before the first frame).
        self._take_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._warmed = 0
        self._running_workers = options.workers
        self._next_sequence = 0

    def channel_in(self) -> LatestSlot | BoundedChannel:
        return LatestSlot() if self.options.pace == "realtime" else BoundedChannel(self.options.queue_size)

    # -- control --------------------------------------------------------------------------
    def stop(self, reason: StopReason) -> None:
        """Ask every thread to finish (safe from signal handlers and any thread)."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
        self.stop_event.set()

    def _record_error(self, stage: str, error: BaseException) -> None:
        """Keep the first failure (called inside its except block, for the traceback)."""
        with self._error_lock:
            if self._error is None:
                self._error = PipelineError(stage, error, traceback.format_exc())
                self._error.__cause__ = error

    def _guarded(self, stage: str, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            block_signals()  # signals are the main thread's
            name_os_thread(f"rs-{stage}")
            try:
                body()
            except BaseException as error:  # noqa: BLE001 - any failure must stop the others
                self._record_error(stage, error)
                self.stop(StopReason.FAILED)
        return run

    # -- threads --------------------------------------------------------------------------
    def _capture(self) -> None:
        height, width = self.engine.info.input_size
        pace = self.options.pace == "realtime" and not self.source.live
        while not self.ready.wait(POLL_S):
            if self.stop_event.is_set():
                return
        meter, decode, resize = RateMeter(), StageTimer(), StageTimer()
        frames = self.source.frames(self.stop_event)
        start = time.monotonic()
        index = 0
        while not self.stop_event.is_set():
            if self.options.max_frames is not None and index >= self.options.max_frames:
                break
            # Pace: a file under --pace realtime is released at its own FPS, like a camera.
            if pace:
                wait_until(start + index / self.source.fps, self.stop_event)
            # Decode the next frame (the source skips and counts undecodable ones).
            with decode:
                image = next(frames, None)
            if image is None:
                break
            captured_at = time.perf_counter()
            # Resize to the engine's input here, so the inference thread only feeds the engine.
            with resize:
                model_input = to_input(image, (height, width), self.engine.info.resize)
            packet = Packet(index, captured_at, image, model_input[None], self.dropped,
                            self.source.stats.corrupt, meter.tick(captured_at),
                            {"decode": decode.ms, "resize": resize.ms,
                             "decode_cpu": decode.cpu_ms, "resize_cpu": resize.cpu_ms},
                            source_name=self.source.current_name)
            # Hand over: the mailbox replaces a stale frame, the queue waits for room.
            if self.frames_in.put(packet, self.stop_event):
                self.dropped += 1
            index += 1
        if index == 0 and self.source.stats.corrupt and not self.stop_event.is_set():
            raise SourceError(f"{self.source.name}: none of its {self.source.stats.corrupt} frames "
                              "could be decoded; check the files")
        # The end marker may displace the last unread frame: that frame is dropped too.
        if self.frames_in.put(END, self.stop_event):
            self.dropped += 1

    def _infer(self) -> None:
        # Warm-up on this thread: backends that bind a device context per thread (TensorRT
        # with pycuda) set it up here, and the first slow calls stay out of the measurements.
        height, width = self.engine.info.input_size
        blank = np.zeros((1, height, width, 3), np.uint8)
        for _ in range(self.options.warmup):
            self.engine.infer(blank)
        with self._count_lock:
            self._warmed += 1
            if self._warmed == self.options.workers:
                self.ready.set()
        timer = StageTimer()
        while not self.stop_event.is_set():
            # Take the next frame and its sequence number together, so that the render thread
            # can put frames from several inference threads back in capture order.
            with self._take_lock:
                packet = self.frames_in.get(POLL_S)
                if isinstance(packet, Packet):
                    packet.sequence = self._next_sequence
                    self._next_sequence += 1
            if packet is None:
                continue
            if packet is END:
                self._finish_worker()
                return
            # Queue wait tells whether inference keeps up (it grows when it does not).
            packet.timings["wait"] = (time.perf_counter() - packet.captured_at) * 1000.0
            with timer:
                packet.labels = self.engine.infer(packet.model_input)[0]
            packet.timings["infer"] = timer.ms
            # A class id beyond the table means the labels file was made for another model.
            if int(packet.labels.max()) > self.max_class_id:
                raise EngineError(f"the model produced class id {int(packet.labels.max())} but its "
                                  f"class table has ids up to {self.max_class_id}; pass the labels "
                                  "file made for this model")
            self.results.put(packet, self.stop_event)

    def _finish_worker(self) -> None:
        """Pass the end marker on: to the other inference threads, and downstream once all are done."""
        with self._count_lock:
            self._running_workers -= 1
            last = self._running_workers == 0
        if last:
            self.results.put(END, self.stop_event)
        else:
            self.frames_in.put(END, self.stop_event)

    def _items(self, channel: BoundedChannel) -> Iterator[Any]:
        """A channel's items until its end marker, or until stop."""
        while not self.stop_event.is_set():
            item = channel.get(POLL_S)
            if item is END:
                return
            if item is not None:
                yield item

    def _render(self) -> None:
        pending: dict[int, Packet] = {}  # frames that overtook an earlier one (workers > 1)
        next_sequence = 0
        # 15 frames a second are plenty to find the hood (and a third of them to follow it once
        # found); more would only cost render time.
        fps = self.source.fps if math.isfinite(self.source.fps) else 30.0
        stride = max(1, round(fps / 15))
        state = RenderState(hood=hood_from_spec(self.options.hood, every=stride))
        # Every frame of a file is written (--pace all): look ahead in its first seconds, so
        # that the hood is masked from the first frame on instead of after a few seconds.
        if isinstance(state.hood, HoodFinder) and self.options.pace == "all" and self.source.file:
            state.hood = scan_video(str(self.source.file), fps, LOOKAHEAD_SECONDS,
                                    enough=LOOKAHEAD_COUNTED, stop=self.stop_event)
            state.hood.every = stride
            log.info("hood: looked for it in the video's start first (%d moving frames)",
                     state.hood.counted)
        self.hood = state.hood
        for packet in self._items(self.results):
            state.infer_meter.tick()
            # Restore capture order, then render every frame that is next in line.
            pending[packet.sequence] = packet
            while next_sequence in pending:
                self._render_one(pending.pop(next_sequence), state)
                next_sequence += 1
        self.rendered.put(END, self.stop_event)  # returns at once when stopping

    def _render_one(self, packet: Packet, state: RenderState) -> None:
        render = StageTimer()
        # Overlay at the frame's own resolution, then the telemetry text and the legend.
        with render:
            labels = content_labels(packet.labels, packet.image.shape[:2], self.engine.info.input_size,
                                    self.engine.info.resize)
            # The car's own hood (found from the motion so far) is never painted drivable.
            if state.hood is not None:
                state.hood.add(packet.image)
                labels = apply_hood(labels, state.hood, self.ego_label)
                self._report_hood(state)
            frame = overlay(packet.image, labels, self.palette, self.options.alpha,
                            self.options.outline, in_place=True)
            if self.options.hud:
                draw_hud(frame, [
                    f"capture {measured(packet.capture_fps)} FPS   display "
                    f"{measured(self.display_fps)} FPS",
                    f"infer {measured(state.infer_meter.fps)} FPS  {packet.timings['infer']:5.1f} ms",
                    f"latency {measured(self.latency_ms)} ms   dropped {packet.dropped}",
                ])
            if self.options.legend:
                if state.legend is None:
                    state.legend = make_legend(self.engine.info.classes, self.palette,
                                               self.options.shown_ids, frame.shape[:2])
                paste_legend(frame, state.legend)
        packet.labels = labels  # what --save-masks writes: the hood labelled
        packet.timings.update(render=render.ms, render_cpu=render.cpu_ms)
        # Hand over to the output thread, so encoding the video overlaps the next overlay.
        self.rendered.put((packet, frame), self.stop_event)

    @staticmethod
    def _report_hood(state: RenderState) -> None:
        """One log line when the found hood appears, changes by a point or more, or goes."""
        share = state.hood.share() if state.hood is not None else 0.0
        if abs(share - state.hood_reported) < 0.01 or isinstance(state.hood, FixedHood):
            return
        state.hood_reported = share
        if share:
            log.info("hood: the car's own hood covers %.1f %% of the frame (found from %d moving "
                     "frames); labelled ego, not drivable (--hood off keeps the model's labels)",
                     100 * share, state.hood.counted if state.hood else 0)
        else:
            log.info("hood: no longer found; the model's labels are shown as they are")

    def _output(self) -> None:
        display_meter = RateMeter()
        for packet, frame in self._items(self.rendered):
            write = StageTimer()
            # Write / show; latency ends when the frame has left the pipeline.
            with write:
                for sink in self.sinks:
                    sink.write_frame(frame, packet.source_name)
                    sink.write_labels(packet.labels, frame.shape[:2], packet.source_name)
                if self.window is not None:
                    self.to_window.put(frame, self.stop_event)
            # Record the frame's timings (the HUD reads the smoothed latency and display rate).
            latency = (time.perf_counter() - packet.captured_at) * 1000.0
            packet.timings.update(write=write.ms, latency=latency, write_cpu=write.cpu_ms)
            self.latency_ms = latency if self.latency_ms == 0 else self.latency_ms + 0.1 * (latency - self.latency_ms)
            self.display_fps = display_meter.tick()
            self.recorder.add(packet.timings)
            if self.sinks:
                record = {"index": packet.index,
                          "capture_time": round(packet.captured_at - self.recorder.started, 6),
                          **{f"{k}_ms": round(v, 3) for k, v in packet.timings.items()},
                          "dropped": packet.dropped, "corrupt": packet.corrupt}
                if packet.source_name:  # which image, or which clip's frame, this was
                    record["source"] = packet.source_name
                for sink in self.sinks:
                    sink.write_record(record)
        self.finished.set()  # run() tells the end of input from a stop by stop_reason

    # -- main thread ----------------------------------------------------------------------
    def run(self) -> dict:
        """Run to the end of input or until stop(); returns the summary, raises PipelineError."""
        with switch_interval(SWITCH_INTERVAL_S):
            return self._run()

    def _run(self) -> dict:
        stages = [("capture", self._capture)]
        stages += [("inference", self._infer)] * self.options.workers
        stages += [("render", self._render), ("output", self._output)]
        workers = [threading.Thread(target=self._guarded(name, body), name=name, daemon=True)
                   for name, body in stages]
        for worker in workers:
            worker.start()
        try:
            # The main thread owns the window (HighGUI is not thread-safe on every platform).
            while not self.finished.is_set() and not self.stop_event.is_set():
                if self.window is not None:
                    if self.window.show(self.to_window.get(POLL_S / 2)):
                        self.stop(StopReason.QUIT_KEY)
                else:
                    self.finished.wait(POLL_S)
        except KeyboardInterrupt:
            self.stop(StopReason.INTERRUPTED)
        finally:
            if self.finished.is_set() and self.stop_reason is None:
                self.stop_reason = StopReason.END_OF_INPUT
            self.stop_event.set()
            for worker in workers:
                worker.join(timeout=2.0)
            self._close(engine_idle=not any(w.is_alive() for w in workers if w.name == "inference"))
        if self._error is not None:
            raise self._error
        stats = self.source.stats
        summary = self.recorder.summary(self.dropped, stats.corrupt, stats.reopened)
        summary["skipped_files"] = stats.skipped_files
        summary["hood"] = {"mode": self.options.hood, "share": round(self.hood.share(), 4) if self.hood else 0.0,
                           "frames_counted": self.hood.counted if self.hood else 0}
        return summary

    def _close(self, engine_idle: bool) -> None:
        """Close sinks first (their files must be complete), then the source and the engine;
        an engine still inside a call (a stuck driver) is left to the process exit."""
        for sink in (*self.sinks, self.window, self.source):
            if sink is None:
                continue
            try:
                sink.close()
            except SinkError as error:  # finishing a file failed (disk full): the run failed
                self._record_error("output", error)
        if engine_idle:
            self.engine.close()
