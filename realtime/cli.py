"""Command line of the live application (`python run.py ...`)."""

from __future__ import annotations

import argparse
import gc
import glob
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import engines
from engines.autoselect import int8_may_saturate
from engines.base import EngineError
from engines.files import OutputError, check_writable, write_atomically
from engines.hood import HOOD_HELP, hood_from_spec
from realtime.pipeline import Pipeline, PipelineError, PipelineOptions, StopReason
from realtime.render import parse_class_selection
from realtime.sinks import (MaskFolderSink, MetricsSink, SinkError, VideoSink, Window,
                            display_problem, is_folder_spec, open_sink)
from realtime.web import WebSink
from realtime.sources import SourceError, open_source, source_kind
from realtime.telemetry import format_summary, keep_frame_memory, peak_rss_mb

USER_ERRORS = (EngineError, SourceError, OutputError)  # SinkError is an OutputError
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
MAX_FPS = 1000.0
EXIT_STATUS = {StopReason.INTERRUPTED: EXIT_INTERRUPTED, StopReason.TERMINATED: EXIT_TERMINATED}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description="Real-time semantic segmentation of driving video.",
        epilog="examples:\n  python run.py 0\n  python run.py rtsp://192.168.1.20/stream\n  python run.py --camera 0\n  python run.py --video drive.mp4 --save out.mp4\n"
               "  python run.py --images \"frames/*.png\" --headless --metrics m.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("input (one of)")
    inputs = source.add_mutually_exclusive_group(required=True)
    inputs.add_argument("input", nargs="?", default=None, metavar="INPUT",
                        help="camera index or /dev/videoN, video file, image folder or glob, or a "
                             "stream URL (rtsp://, rtmp://, http(s)://, udp://, srt://)")
    inputs.add_argument("--input", dest="input_option", metavar="INPUT", help="the same as INPUT")
    inputs.add_argument("--camera", metavar="INDEX|DEVICE|URL",
                        help="camera index (0), device path, or stream URL (rtsp://, http://...)")
    inputs.add_argument("--video", metavar="FILE", help="video file to replay")
    inputs.add_argument("--images", metavar="GLOB|DIR", help="image folder or quoted glob")
    source.add_argument("--pace", choices=["realtime", "all"], default=None,
                        help="realtime: release frames at the source FPS and drop stale ones "
                             "(default for cameras); all: process every frame (default for files)")
    source.add_argument("--fps", type=float, default=None, help="frame rate of an image sequence (30)")
    source.add_argument("--loop", action="store_true", help="restart a file source at its end")
    source.add_argument("--max-frames", type=int, default=None, metavar="N")
    source.add_argument("--camera-size", type=int, nargs=2, metavar=("W", "H"), default=None)
    source.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="network streams: seconds to wait for the connection and for each "
                             "frame before giving up (5)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", type=Path, default=engines.DEFAULT_MODEL,
                       help="model file (.onnx, .pt, .engine) or a shipped model's name: "
                            + ", ".join(engines.shipped_models())
                            + " (default: roadseg; the README's model card says which is which)")
    backends = engines.BACKENDS.values()
    model.add_argument("--backend", default="auto", choices=["auto", *engines.BACKENDS],
                       help="auto: for .onnx, the fastest runtime and precision installed "
                            "(timed once on this machine, then cached; an INT8 sibling may "
                            "stand in); otherwise by file suffix (" + ", ".join(
                           f"{'/'.join(b.suffixes)} {b.name}" for b in backends) + ")")
    precisions = sorted({p for b in backends for p in b.precisions})
    model.add_argument("--precision", default="auto", choices=["auto", *precisions],
                       help="; ".join(f"{b.name}: {'/'.join(b.precisions)}" for b in backends))
    model.add_argument("--calib", default=None, help="int8 TensorRT: calibration video/folder/glob")
    model.add_argument("--labels", type=Path, default=None,
                       help="JSON class table for a model without one (see README)")
    model.add_argument("--threads", type=int, default=None,
                       help="CPU threads per inference call (default: cores / workers)")
    model.add_argument("--workers", type=int, default=None,
                       help="parallel inference threads (default: 2 for a CPU runtime with --pace "
                            "all on a multi-core CPU, else 1); frames stay in order")

    view = parser.add_argument_group("overlay")
    view.add_argument("--classes", default="drivable,objects",
                      help="what to overlay: drivable, objects, background, all, or class names")
    view.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1")
    view.add_argument("--no-outline", dest="outline", action="store_false")
    view.add_argument("--no-hud", dest="hud", action="store_false")
    view.add_argument("--no-legend", dest="legend", action="store_false")
    view.add_argument("--hood", default="auto", metavar="auto|off|FRACTION", help=HOOD_HELP)

    out = parser.add_argument_group("output")
    shows = out.add_mutually_exclusive_group()
    shows.add_argument("--show", dest="show", action="store_true", default=None,
                       help="open a window (default when a display exists)")
    shows.add_argument("--headless", dest="show", action="store_false", help="no window")
    out.add_argument("--save", action="append", default=[], metavar="FILE|DIR/",
                     help="write the overlay: a video (.mp4/.mkv/.mov H.264, .avi MJPEG) or a "
                          "folder of PNGs (ends in /); repeat for several")
    out.add_argument("--save-masks", type=Path, default=None, metavar="DIR",
                     help="write the class ids themselves: one single-channel PNG per frame "
                          "(pixel = class id, the frame's size) and classes.json")
    out.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                     help="live web view: / page with charts, /stream.mjpg, /stats (binds "
                          "127.0.0.1 unless a host is given; port 0 picks a free one)")
    out.add_argument("--metrics", type=Path, default=None, metavar="FILE",
                     help="one JSON line per frame with stage times and latency")
    out.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                     help="write the end-of-run summary as JSON")
    out.add_argument("--quiet", action="store_true", help="no summary table")
    out.add_argument("--verbose", action="store_true",
                     help="keep OpenCV, FFmpeg and Qt warnings (hidden by default)")
    return parser


def inference_threads(backend_name: str, pace: str, workers: int | None,
                      threads: int | None) -> tuple[int, int | None]:
    """How many inference threads, and CPU threads per call.

    On a CPU, one call spread over every core stalls whenever decode or render takes a core
    from it (each parallel step waits for its slowest thread); two single-core calls in
    flight degrade gracefully instead. That is for throughput (--pace all) on a CPU backend
    whose calls may run in parallel; live input keeps one call on all cores for the lowest
    latency. Other backends run one call at a time.
    """
    backend = engines.backend_spec(backend_name)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = 2 if backend.parallel_calls and pace == "all" and cores >= 2 else 1
    if workers < 1:
        raise EngineError("--workers must be at least 1")
    if workers > cores:
        raise EngineError(f"--workers {workers}: this machine has {cores} CPU cores; use at most "
                          f"{cores}")
    if workers > 1 and not backend.parallel_calls:
        raise EngineError(f"--workers {workers}: the {backend.name} backend runs one call at a "
                          "time; use --workers 1")
    if threads is None and workers > 1:
        threads = max(1, cores // workers)
    return workers, threads


def input_paths(args: argparse.Namespace) -> set[Path]:
    """The files the run reads (resolved), so that no output can overwrite one of them."""
    spec = args.input or args.input_option
    kind = source_kind(spec) if spec else None
    video = args.video or (spec if kind in ("video", "videos") else None)
    images = args.images or (spec if kind == "images" else None)
    paths: set[Path] = set()
    # A file, or every file of a folder or glob (image sequences, a folder of clips).
    for given in filter(None, (video, images)):
        path = Path(given)
        if path.is_dir():
            found = path.iterdir()
        elif any(ch in given for ch in "*?["):
            found = map(Path, glob.glob(given))
        else:
            found = [path]
        paths.update(p.resolve() for p in found)
    return paths


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before the first frame, any output that cannot be written or would overwrite
    the input."""
    reads = input_paths(args)
    outputs = [("--save", spec) for spec in args.save]
    if args.save_masks is not None:
        overlays = [Path(spec).resolve() for spec in args.save if is_folder_spec(spec)]
        if args.save_masks.resolve() in overlays:
            raise SinkError(f"--save-masks {args.save_masks} is also a --save folder; masks and "
                            "overlays share names. Choose two folders")
        outputs.append(("--save-masks", args.save_masks))
    for flag, spec in [*outputs, ("--metrics", args.metrics), ("--summary-json", args.summary_json)]:
        if spec is None:
            continue
        path = Path(spec)
        folder_form = flag == "--save-masks" or (flag == "--save" and is_folder_spec(spec))
        if folder_form and any(p.parent == path.resolve() for p in reads):
            raise SinkError(f"{flag} {spec} is the input folder; its PNGs would overwrite the input "
                            "images. Choose another folder")
        if path.resolve() in reads:
            raise SinkError(f"{flag} {path} is the input file; writing it would destroy the input. "
                            "Choose another output name")
        if not folder_form:
            check_writable(path, flag)


def check_display(show: bool | None) -> bool:
    """Whether to open a window: --show insists (and fails without a display), the default
    falls back to headless with a warning when $DISPLAY names a server that is not there."""
    if show is False:
        return False
    problem = display_problem()
    if problem is None:
        return True
    if show:
        raise SinkError(f"--show: {problem}; use --headless with --save")
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        print(f"warning: {problem}; running headless", file=sys.stderr)
    return False


# Decode, resize, overlay and H.264 cost about 18.5 CPU ms per megapixel of frame (realtime.bench,
# 960x540: 1.3 + 0.45 + 4.25 + 3.6 ms on an AMX Xeon; 3.5 + 0.35 + 2.5 + 3.4 on an AMD EPYC).
OTHER_STAGES_MS_PER_MEGAPIXEL = 18.5
# One inference thread only when a call costs clearly less than the rest of the frame. Measured
# at 960x540: OpenVINO bf16 at 0.39 of the rest ran 115 FPS with one thread and 104 with two;
# OpenVINO INT8 at 0.93 of it ran 76 FPS with one and 90 with two (alternated runs, medians).
ONE_THREAD_BELOW_SHARE = 0.6


def engine_is_clearly_smaller(engine: Any, frame_size: tuple[int, int] | None) -> bool:
    """Whether one single-thread call costs well under the CPU of the rest of a frame's stages.

    Then a second inference thread only takes a core from decode, overlay and encode. Near
    parity it is the other way round: one inference thread becomes a serial chain that the
    other stages wait on. Timed on a blank frame after a warm-up.
    """
    height, width = engine.info.input_size
    blank = np.zeros((1, height, width, 3), np.uint8)
    for _ in range(2):
        engine.infer(blank)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        engine.infer(blank)
        times.append((time.perf_counter() - started) * 1000)
    frame_h, frame_w = frame_size or (height, width)
    other_stages_ms = OTHER_STAGES_MS_PER_MEGAPIXEL * frame_h * frame_w / 1e6
    return float(np.median(times)) < ONE_THREAD_BELOW_SHARE * other_stages_ms


def build_pipeline(args: argparse.Namespace) -> Pipeline:
    """Open everything that can fail on bad input, before any thread starts."""
    if not 0.0 <= args.alpha <= 1.0:
        raise SinkError(f"--alpha {args.alpha} is outside 0..1")
    if args.max_frames is not None and args.max_frames < 1:
        raise SourceError("--max-frames must be at least 1")
    if args.fps is not None and not (math.isfinite(args.fps) and 0 < args.fps <= MAX_FPS):
        raise SourceError(f"--fps {args.fps}: give a frame rate above 0 and at most {MAX_FPS}")
    check_outputs(args)
    try:
        hood_from_spec(args.hood)
    except ValueError as error:
        raise SourceError(str(error)) from None
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise SourceError(f"--timeout {args.timeout}: give seconds above 0")
    source = open_source(args.video, args.camera, args.images, args.loop, args.fps,
                         tuple(args.camera_size) if args.camera_size else None, args.timeout,
                         args.input or args.input_option)
    opened: list = [source]  # closed again if a later step refuses the input
    try:
        args.model = engines.resolve_model(args.model)
        if args.backend == "auto":
            # The fastest installed runtime and precision for this model on this CPU (an INT8
            # sibling may stand in when --precision is auto), measured once and cached.
            chosen = engines.choose(args.model, args.precision, args.labels)
            name, args.model, args.backend_reason = chosen.backend, chosen.path, chosen.reason
            args.precision = chosen.precision
        else:
            name, args.backend_reason = args.backend, "--backend"
        backend = engines.backend_spec(name)
        if args.precision != "auto" and args.precision not in backend.precisions:
            raise EngineError(f"--precision {args.precision} with the {backend.name} backend: "
                              f"{backend.precision_hint.format(precision=args.precision)}")
        pace = args.pace or ("realtime" if source.live else "all")
        workers, threads = inference_threads(backend.name, pace, args.workers, args.threads)
        def open_engine(streams: int) -> Any:
            # Inference shares the CPU with decode and render: ONNX Runtime must not spin-wait.
            return engines.load(args.model, backend.name, args.labels, threads=threads, spin=False,
                                precision=args.precision, calib=args.calib, streams=streams)

        engine = open_engine(workers)
        opened.append(engine)
        if args.workers is None and workers > 1 and engine_is_clearly_smaller(engine, source.frame_size):
            # Reopened for one caller: a model compiled for two streams runs slower with one.
            workers = 1
            opened.remove(engine)
            engine.close()
            engine = open_engine(workers)
            opened.append(engine)
        try:
            shown = parse_class_selection(args.classes, engine.info.classes)
        except ValueError as error:
            raise EngineError(str(error)) from None
        # A file whose header claims no usable rate is written at 30 FPS.
        fps = source.fps if math.isfinite(source.fps) and 0 < source.fps <= MAX_FPS else 30.0
        sinks = []
        for spec in args.save:
            sinks.append(open_sink(spec, fps))
            opened.append(sinks[-1])
        if args.save_masks is not None:
            sinks.append(MaskFolderSink(args.save_masks, engine.info.classes))
            opened.append(sinks[-1])
        if args.metrics:
            sinks.append(MetricsSink(args.metrics))
            opened.append(sinks[-1])
        if args.serve:
            sinks.append(WebSink(args.serve))
            opened.append(sinks[-1])
        show = check_display(args.show)
        if not (show or sinks or args.summary_json):
            print("warning: no window (no display) and no --save, --save-masks, --metrics, --serve "
                  "or --summary-json: this run only prints its summary", file=sys.stderr)
        window = Window(f"roadseg - {source.name}") if show else None
        options = PipelineOptions(pace=pace, max_frames=args.max_frames, alpha=args.alpha,
                                  shown_ids=shown, outline=args.outline, hud=args.hud,
                                  legend=args.legend, workers=workers, hood=args.hood)
        return Pipeline(source, engine, options, sinks=sinks, window=window)
    except BaseException:
        for resource in opened:
            resource.close()
        raise


def entry() -> None:
    """The process entry point (run.py, python -m realtime, the roadseg script): main(), then
    exit. A thread still blocked inside FFmpeg (a stream connect interrupted by Ctrl-C) would
    crash the interpreter's teardown, so with one alive the process leaves at once, after
    every output has been closed and the terminal flushed."""
    status = main()
    # Listed, not is_alive(): a thread stays in the registry until its last Python step, while
    # a join() that Ctrl-C interrupted can make is_alive() say False early (CPython #90882).
    if any(thread.daemon for thread in threading.enumerate()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


def chained_to_interrupt(error: BaseException | None) -> bool:
    """Whether a failure is a Ctrl-C in disguise: a C extension interrupted while it
    initialises (OpenVINO's, seen here) raises its own ImportError with the KeyboardInterrupt
    as the cause."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    """Parse, run, report; returns the process exit status (130 after Ctrl-C at any moment)."""
    try:
        return run(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - re-raised unless Ctrl-C caused it
        if chained_to_interrupt(error):
            return EXIT_INTERRUPTED
        raise


def quiet_libraries(verbose: bool) -> None:
    """OpenCV, its FFmpeg and Qt print warnings that bury the one `error:` line; they are
    kept for --verbose."""
    if verbose:
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    # FFmpeg's own log (e.g. "moov atom not found" for a damaged clip) is set when OpenCV
    # opens its first FFmpeg capture: quiet (AV_LOG_QUIET); the source reports failures itself.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("QT_LOGGING_RULES", "*=false")  # read when the first window opens


def run(args: argparse.Namespace) -> int:
    """Build the pipeline, run it, print and write the summary."""
    quiet_libraries(args.verbose)
    # A video run allocates several frame-sized buffers a frame; keep their pages mapped.
    keep_frame_memory()
    # Progress of a first-use TensorRT build (engines.build logs it) reaches the terminal.
    logging.basicConfig(level=logging.INFO, format="[%(module)s] %(message)s")
    try:
        pipeline = build_pipeline(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    info = pipeline.engine.info
    if not args.quiet:
        loaded = info.details.get("load_seconds")
        print(f"running {info.backend} {info.precision} {info.input_width}x{info.input_height} on "
              f"{info.device} ({args.backend_reason}), {pipeline.options.workers} inference "
              f"thread(s){f', model ready in {loaded:.2f} s' if loaded is not None else ''}",
              file=sys.stderr)
        if info.precision == "int8" and info.device == "cpu" and int8_may_saturate():
            print("note: this CPU has no VNNI, so INT8 kernels can saturate and its labels drift "
                  "further from FP32 than on newer CPUs (see README, CPU runtimes); "
                  "--precision fp32 avoids it", file=sys.stderr)
    for sink in pipeline.sinks:
        if isinstance(sink, WebSink):  # always said: it is how a script finds a port-0 server
            print(f"serving the live view on {sink.url}", file=sys.stderr, flush=True)
    # Everything loaded so far (runtimes, model, modules) lives for the whole run: moving it out
    # of the collector's view keeps each full collection from walking it again and again.
    gc.collect()
    gc.freeze()
    previous = signal.signal(signal.SIGTERM, lambda *_: pipeline.stop(StopReason.TERMINATED))
    try:
        summary = pipeline.run()
    except PipelineError as error:
        cause = error.__cause__
        if isinstance(cause, USER_ERRORS):
            print(f"error: {cause}", file=sys.stderr)
        else:
            print(f"error: {error} (traceback below)\n{error.trace}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary["stop_reason"] = pipeline.stop_reason.value
    summary["peak_rss_mb"] = peak_rss_mb()
    videos = [sink for sink in pipeline.sinks if isinstance(sink, VideoSink)]
    if videos:
        summary["video"] = {"path": str(videos[0].path), "frames": videos[0].frames,
                            "size": list(videos[0].size or ()), "resized": videos[0].resized}
    if args.summary_json:
        try:
            write_atomically(args.summary_json, json.dumps(summary, indent=2))
        except OSError as error:
            print(f"error: --summary-json {args.summary_json}: writing it failed ({error.strerror})",
                  file=sys.stderr)
            return EXIT_FAILED
    if not args.quiet:
        print(f"{info.backend} {info.precision} {info.input_width}x{info.input_height} on "
              f"{pipeline.source.name}; stopped: {pipeline.stop_reason.value}", file=sys.stderr)
        print(format_summary(summary), file=sys.stderr)
        if summary["hood"]["share"]:
            print(f"hood: {100 * summary['hood']['share']:.1f} % of the frame labelled as the car's own "
                  f"(--hood {args.hood})", file=sys.stderr)
        video = summary.get("video")
        if video and not video["frames"]:
            print(f"nothing saved to {video['path']}: the run stopped before a frame reached it",
                  file=sys.stderr)
        elif video:
            width, height = video["size"] or (0, 0)
            resized = (f"; {video['resized']} frames of another size were resized to it"
                       if video["resized"] else "")
            print(f"saved {video['frames']} frames at {width}x{height} to {video['path']}{resized}",
                  file=sys.stderr)
    return EXIT_STATUS.get(pipeline.stop_reason, EXIT_OK)
