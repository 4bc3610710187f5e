"""Segment an archive of dashcam recordings on Ray, with the same engines as the live app.

    python -m fleet recordings/ --out segmented/                 # embedded local Ray
    python -m fleet "archive/**/*.mp4" --out s3out/ --address auto --actors 8 --gpus-per-actor 1

Per video it writes, into OUT/<video name>/: `overlay.mp4` (H.264, unless --no-video),
`frames.parquet` (one row per frame: video, frame, timestamp, the pixel share of every class,
the drivable share, a has_<class> flag for each object class present), with --masks a
`masks/` folder of class-id PNGs, and `summary.json`, written last; all through temporary
names and a rename, so a file that exists is whole. The job writes OUT/job.json (videos,
frames, throughput, failures).

How it runs (Ray Data, streaming):
1. the driver lists the videos, skips those whose summary.json exists (a rerun does no work),
   probes the rest (an unreadable or corrupt one is recorded as a failure and skipped) and
   splits each into ranges of --chunk frames;
2. Ray tasks decode the ranges (OpenCV's FFmpeg, seeking to the range's first frame: the same
   decoder as the live app, so the same pixels);
3. an actor pool runs inference, one engine per actor (any model engines.load opens; one GPU
   per actor with --gpus-per-actor, CPU threads per actor otherwise), frame by frame at batch
   1 as the app does, so the labels equal the app's; actors also render the overlay;
4. the driver receives the frames in order (preserve_order) and writes each video's files.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

import engines
from engines.base import EngineError
from engines.files import OutputError, check_writable, write_atomically
from engines.frame_fit import content_labels, to_input
from engines.frames import VIDEO_SUFFIXES
from engines.hood import HoodFinder, ego_label, hood_from_spec, profile_mask, scan_video
from engines.labels import labels_file_text
from realtime.render import Palette, overlay, parse_class_selection, upsample_labels
from realtime.sinks import SinkError, VideoSink

DECODE_CPUS = 0.5  # a decode task is lighter than inference
PRESENT_SHARE = 0.0005  # an object class counts as present above 0.05 % of the frame
HOOD_SECONDS = 30.0  # --hood auto looks for the hood in this much of each recording's start
HOOD_RATE = 10.0  # frames a second it looks at


def is_url(spec: str) -> bool:
    return "://" in spec


def list_remote(spec: str) -> list[str]:
    """Videos behind an fsspec URL (s3://, gs://, https://, file://...): a file, a folder
    (recursively) or a glob, as URLs of the same protocol."""
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(spec)
    found = []
    for path in paths:
        names = fs.find(path) if fs.isdir(path) else [path]
        found += [fs.unstrip_protocol(name) for name in names if Path(name).suffix.lower() in VIDEO_SUFFIXES]
    return sorted(found)


def local_copy(video: str) -> str:
    """A path OpenCV can open: the video itself, or for a URL a copy fetched once per machine
    into the temp folder (written to a temporary name, then renamed)."""
    if not is_url(video):
        return video
    import hashlib
    import tempfile

    import fsspec

    folder = Path(tempfile.gettempdir()) / "roadseg-fleet"
    folder.mkdir(exist_ok=True)
    target = folder / f"{hashlib.sha1(video.encode()).hexdigest()[:16]}{Path(video).suffix}"
    if not target.exists():
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        with fsspec.open(video, "rb") as remote, open(partial, "wb") as local:
            for chunk in iter(lambda: remote.read(1 << 20), b""):
                local.write(chunk)
        os.replace(partial, target)
    return str(target)


def list_videos(inputs: list[str]) -> list[Path | str]:
    """Video files named directly, found in folders (recursively) or matched by globs; fsspec
    URLs where the matching filesystem is installed."""
    found: list[Path | str] = []
    for spec in inputs:
        if is_url(spec):
            found += list_remote(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        elif any(ch in spec for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(spec, recursive=True)
                            if Path(p).suffix.lower() in VIDEO_SUFFIXES)
        else:
            found.append(path)
    return list(dict.fromkeys(p if isinstance(p, str) else p.resolve() for p in found))


def output_dirs(out: Path, videos: list[Path | str]) -> dict[str, Path]:
    """OUT/<stem> per video; stems that occur twice get a short hash of the path."""
    import hashlib

    stems = [Path(str(v)).stem for v in videos]
    return {str(video): out / (stem if stems.count(stem) == 1 else
                               f"{stem}-{hashlib.sha1(str(video).encode()).hexdigest()[:8]}")
            for video, stem in zip(videos, stems, strict=True)}


def probe(video: Path | str) -> tuple[int, float]:
    """(frame count, fps) of a readable video; ValueError naming the problem otherwise."""
    try:
        path = local_copy(str(video))
    except OSError as error:
        raise ValueError(f"cannot be fetched ({error})") from None
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise ValueError("not a readable video (cannot be opened)")
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        ok, _ = capture.read()
        if not ok or frames <= 0:
            raise ValueError("no decodable frames (empty or damaged file)")
        return frames, fps if 1 <= fps <= 1000 else 30.0
    finally:
        capture.release()


def find_video_hood(video: Path | str, fps: float, spec: str) -> list[float] | None:
    """One recording's hood profile (engines.hood) for every frame of it: `--hood FRACTION` as
    given; `auto` found from the first HOOD_SECONDS, read at HOOD_RATE; None for none or off
    (and for a recording that cannot be fetched again: its decode then reports the failure)."""
    quiet_opencv()
    hood = hood_from_spec(spec)
    if isinstance(hood, HoodFinder):
        try:
            path = local_copy(str(video))
        except OSError:
            return None
        hood = scan_video(path, fps, HOOD_SECONDS, HOOD_RATE)
    profile = hood.profile() if hood is not None else None
    return None if profile is None else [round(float(top), 4) for top in profile]


def quiet_opencv() -> None:
    """OpenCV's FFmpeg warnings would flood the job's output; failures are reported instead."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def decode_range(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray task body: the frames [start, stop) of one video, as rows; an error row (frame -1)
    when the file breaks part-way, so one bad video never fails the job."""
    quiet_opencv()
    capture = cv2.VideoCapture(local_copy(item["video"]), cv2.CAP_FFMPEG)
    try:
        if item["start"]:
            capture.set(cv2.CAP_PROP_POS_FRAMES, item["start"])
        for index in range(item["start"], item["stop"]):
            ok, image = capture.read()
            if not ok:
                if index < item["stop"] - 1 or item["stop"] < item["frames"]:
                    yield {**_row(item, -1), "error": f"decoding stopped at frame {index}"}
                return
            yield {**_row(item, index), "image": image, "error": ""}
    finally:
        capture.release()


def _row(item: dict[str, Any], index: int) -> dict[str, Any]:
    return {"video": item["video"], "frame": index, "fps": item["fps"], "frames": item["frames"]}


class Segmenter:
    """Ray actor: one engine for its lifetime; labels, class shares and the overlay per frame."""

    def __init__(self, model: str, backend: str, threads: int | None, video: bool,
                 classes: str, hoods: dict[str, list[float]] | None = None,
                 masks: bool = False) -> None:
        self.engine = engines.load(model, backend, threads=threads, spin=False)
        self.classes = self.engine.info.classes
        self.hoods = hoods or {}  # video → hood profile, for the videos that show one
        self.ego = ego_label(self.classes)
        self.masks: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self.palette = Palette.build(self.classes, parse_class_selection(classes, self.classes))
        self.video, self.with_masks = video, masks

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        height, width = self.engine.info.input_size
        shares, overlays, masks = [], [], []
        for video, image, error in zip(batch["video"], batch["image"], batch["error"], strict=True):
            if error:  # an error row passes through
                shares.append(np.zeros(len(self.classes), np.float32))
                overlays.append(np.zeros((1, 1, 3), np.uint8))
                masks.append(b"")
                continue
            # The app's steps: resize to the input (bilinear), infer at batch 1.
            info = self.engine.info
            labels = self.engine.infer(to_input(image, (height, width), info.resize)[None])[0]
            labels = content_labels(labels, image.shape[:2], info.input_size, info.resize)
            labels = self.without_hood(str(video), labels)
            counts = np.bincount(labels.ravel(), minlength=len(self.classes))[:len(self.classes)]
            shares.append((counts / labels.size).astype(np.float32))
            overlays.append(overlay(image, labels, self.palette) if self.video else np.zeros((1, 1, 3), np.uint8))
            # The class ids as the app's --save-masks writes them, PNG-encoded here (in
            # parallel, and ~20x smaller to send than the array).
            masks.append(cv2.imencode(".png", upsample_labels(labels, *image.shape[:2]))[1].tobytes()
                         if self.with_masks else b"")
        out = {key: batch[key] for key in ("video", "frame", "fps", "frames", "error")}
        out["shares"] = np.stack(shares)
        out["overlay"] = overlays if self.video else np.zeros(len(shares), np.uint8)
        out["mask"] = masks
        return out


    def without_hood(self, video: str, labels: np.ndarray) -> np.ndarray:
        """The labels with the recording's hood set to the ego label (as the live app does)."""
        profile = self.hoods.get(video)
        if profile is None:
            return labels
        key = (video, labels.shape)
        if key not in self.masks:
            self.masks[key] = profile_mask(profile, *labels.shape[:2])
        return np.where(self.masks[key], np.asarray(self.ego, labels.dtype), labels)


class VideoWriterSet:
    """The driver's per-video outputs: rows for the Parquet table, the overlay video, all
    written to temporary names and renamed when the video is complete."""

    def __init__(self, video: str, folder: Path, classes: list, fps: float, with_video: bool,
                 hood: list[float] | None = None, with_masks: bool = False):
        self.video, self.folder, self.classes = video, folder, classes
        self.hood_share = float(np.mean(1.0 - np.asarray(hood))) if hood else 0.0
        folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.sink = VideoSink(folder / ".overlay.partial.mp4", fps) if with_video else None
        # Masks go to a partial folder renamed to masks/ when the video is complete.
        self.masks = folder / ".masks.partial" if with_masks else None
        if self.masks is not None:
            shutil.rmtree(self.masks, ignore_errors=True)  # a run that broke off left it
            self.masks.mkdir()
            (self.masks / "classes.json").write_text(labels_file_text(classes))
        self.fps = fps
        self.error = ""

    def add(self, frame: int, shares: np.ndarray, image: Any, mask: bytes = b"") -> None:
        row: dict[str, Any] = {"video": str(self.video), "frame": frame,
                               "timestamp": round(frame / self.fps, 6)}
        for info in self.classes:
            row[f"share_{info.name}"] = float(shares[info.id])
        row["drivable_share"] = float(sum(shares[c.id] for c in self.classes if c.group == "drivable"))
        for info in self.classes:
            if info.group == "object":
                row[f"has_{info.name}"] = bool(shares[info.id] >= PRESENT_SHARE)
        self.rows.append(row)
        if self.sink is not None:
            self.sink.write_frame(image)
        if self.masks is not None:
            (self.masks / f"frame_{frame:06d}.png").write_bytes(mask)

    def finish(self, seconds: float) -> dict[str, Any]:
        """Close the video, write frames.parquet, then summary.json (the completeness mark)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.sink is not None:
            self.sink.close()
            os.replace(self.folder / ".overlay.partial.mp4", self.folder / "overlay.mp4")
        if self.masks is not None:
            shutil.rmtree(self.folder / "masks", ignore_errors=True)  # left by a broken-off run
            os.replace(self.masks, self.folder / "masks")
        table = pa.Table.from_pylist(self.rows)
        partial = self.folder / ".frames.partial.parquet"
        pq.write_table(table, partial)
        os.replace(partial, self.folder / "frames.parquet")
        summary = {"video": str(self.video), "frames": len(self.rows), "seconds": round(seconds, 3),
                   "drivable_share_mean": float(np.mean([r["drivable_share"] for r in self.rows])),
                   "hood_share": round(self.hood_share, 4),
                   "overlay": "overlay.mp4" if self.sink is not None else None,
                   "masks": "masks/" if self.masks is not None else None}
        write_json(self.folder / "summary.json", summary)
        return summary

    def abandon(self) -> None:
        """A video that broke part-way leaves no output that looks complete."""
        if self.sink is not None:
            try:
                self.sink.close()
            except SinkError:
                pass
        for name in (".overlay.partial.mp4", ".frames.partial.parquet"):
            (self.folder / name).unlink(missing_ok=True)
        if self.masks is not None:
            shutil.rmtree(self.masks, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(data, indent=2))


# The signals that stop a job: Ctrl-C, and SIGTERM from a scheduler, `kill` or `timeout`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler taking the machine back, `kill`, `timeout`): the job stops as on
    Ctrl-C, through the same clean-up."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main(args: argparse.Namespace) -> int:
    """Run the job; Ctrl-C or SIGTERM stops it with one line, keeping every video finished so
    far (status 130 or 143, as a shell reports those signals)."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return run_job(args)
    except KeyboardInterrupt as stop:
        how, status = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        print(f"{how}: each video with a summary.json under {args.out} is complete; a rerun "
              "with the same --out does the rest", file=sys.stderr)
        return status
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(args: argparse.Namespace) -> int:
    import ray
    import ray.data

    started = time.perf_counter()
    quiet_opencv()
    # Plan: list, skip complete outputs, probe, split into frame ranges.
    videos = list_videos(args.inputs)
    if not videos:
        print(f"error: no videos in {' '.join(args.inputs)}; give video files, folders or quoted "
              "globs", file=sys.stderr)
        return 2
    try:
        with engines.load(args.model, args.backend) as probe_engine:
            classes = probe_engine.info.classes
            parse_class_selection(args.classes, classes)
    except (EngineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        check_writable(args.out / "job.json", "--out")
    except OSError as error:
        print(f"error: --out {args.out}: cannot create it ({error.strerror}); choose another "
              "folder", file=sys.stderr)
        return 2
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failures, skipped, items, planned = [], [], [], {}
    folders = output_dirs(args.out, videos)
    for video in videos:
        if (folders[str(video)] / "summary.json").exists():
            skipped.append(str(video))
            continue
        try:
            frames, fps = probe(video)
        except ValueError as error:
            failures.append({"video": str(video), "error": str(error)})
            continue
        planned[str(video)] = (frames, fps)
        items += [{"video": str(video), "start": start, "stop": min(frames, start + args.chunk),
                   "frames": frames, "fps": fps} for start in range(0, frames, args.chunk)]
    print(f"{len(videos)} videos: {len(planned)} to do ({sum(f for f, _ in planned.values())} frames "
          f"in {len(items)} ranges), {len(skipped)} already done, {len(failures)} unreadable",
          file=sys.stderr)
    results: dict[str, Any] = {}
    if items:
        # Logical CPUs of the local Ray: the actors hold theirs for the whole job, so the decode
        # tasks need room beside them or the pipeline waits forever.
        local_cpus = max(args.num_cpus or os.cpu_count() or 1,
                         math.ceil(args.actors * args.threads + DECODE_CPUS))
        try:
            start_ray(ray, args, local_cpus)
            results = run_on_ray(ray, items, planned, classes, args, failures, folders)
        except OutputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            with interrupt_deferred():
                ray.shutdown()
    seconds = time.perf_counter() - started
    frames_done = sum(r["frames"] for r in results.values())
    job = {"videos": len(videos), "done": len(results), "skipped": skipped, "failures": failures,
           "frames": frames_done, "seconds": round(seconds, 2),
           "fps": round(frames_done / seconds, 2) if frames_done else 0.0, "actors": args.actors,
           "model": str(args.model)}
    write_json(args.out / "job.json", job)
    print(f"done: {len(results)} videos, {frames_done} frames in {seconds:.1f} s "
          f"({job['fps']:.1f} frames/s), {len(skipped)} skipped, {len(failures)} failed",
          file=sys.stderr)
    for failure in failures:
        print(f"failed: {failure['video']}: {failure['error']}", file=sys.stderr)
    return 0 if not failures else 1


def start_ray(ray: Any, args: argparse.Namespace, local_cpus: int) -> None:
    """Start (or join) Ray, keeping this job's stop signals: ray.init puts its own SIGTERM
    handlers in place (Python's `sys.exit(15)`, then a native stack dump), which the block
    replaces with ours again when it ends."""
    try:
        with interrupt_deferred():
            ray.init(address=args.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if args.address else {"num_cpus": local_cpus}))
    except SystemExit as request:
        if request.code == signal.SIGTERM:  # Ray's own handler answered a SIGTERM while starting
            raise Terminated from None
        raise


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until the block ends: Ray broken
    off half-way through its shutdown has its own threads end the process with status 1 and no
    message."""
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, _frame: caught.append(number))
                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise Terminated if signal.SIGTERM in caught else KeyboardInterrupt


def run_on_ray(ray: Any, items: list[dict[str, Any]], planned: dict[str, tuple[int, float]],
               classes: list, args: argparse.Namespace, failures: list[dict[str, str]],
               folders: dict[str, Path]) -> dict[str, Any]:
    """Find each recording's hood, then decode, segment and write every range; returns the
    finished videos' summaries."""
    # Each recording's hood, one Ray task per video (it reads the recording's first seconds).
    find = ray.remote(num_cpus=DECODE_CPUS)(find_video_hood)
    found = ray.get([find.remote(video, fps, args.hood) for video, (_, fps) in planned.items()])
    hoods = {video: hood for video, hood in zip(planned, found, strict=True) if hood is not None}
    if hoods:
        print(f"a hood in {len(hoods)} of {len(planned)} videos: labelled ego in all their frames "
              f"(--hood {args.hood})", file=sys.stderr)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # frames come back in video order
    context.enable_progress_bars = not args.quiet
    per_actor = {"num_gpus": args.gpus_per_actor} if args.gpus_per_actor else {"num_cpus": args.threads}
    dataset = (ray.data.from_items(items, override_num_blocks=len(items))
               .flat_map(decode_range, num_cpus=DECODE_CPUS)
               .map_batches(Segmenter, batch_size=args.batch,
                            fn_constructor_kwargs={"model": str(args.model), "backend": args.backend,
                                                   "threads": args.threads, "video": not args.no_video,
                                                   "classes": args.classes, "hoods": hoods,
                                                   "masks": args.masks},
                            compute=ray.data.ActorPoolStrategy(size=args.actors), **per_actor))
    return write_outputs(dataset, planned, classes, args, failures, folders, hoods)


def write_outputs(dataset: Any, planned: dict[str, tuple[int, float]], classes: list,
                  args: argparse.Namespace, failures: list[dict[str, str]],
                  folders: dict[str, Path], hoods: dict[str, list[float]]) -> dict[str, Any]:
    """Consume the ordered rows and write every video's files; returns their summaries."""
    results, current, started = {}, None, time.perf_counter()
    broken: set[str] = set()
    try:
        for row in dataset.iter_rows():
            video = row["video"]
            if video in broken:
                continue
            if current is None or str(current.video) != video:
                # A new video begins: the previous one is complete (ranges arrive in order).
                if current is not None:
                    results[str(current.video)] = current.finish(time.perf_counter() - started)
                started = time.perf_counter()
                current = VideoWriterSet(video, folders[video], classes, planned[video][1],
                                         not args.no_video, hoods.get(video), args.masks)
            if row["error"]:
                failures.append({"video": video, "error": row["error"]})
                current.abandon()
                broken.add(video)
                current = None
                continue
            current.add(int(row["frame"]), row["shares"], row["overlay"], row["mask"])
        if current is not None:
            results[str(current.video)] = current.finish(time.perf_counter() - started)
    except KeyboardInterrupt:
        if current is not None:  # the video being written is left as if never started
            current.abandon()
        raise
    except (OutputError, OSError) as error:
        # A full disk or a vanished folder stops the job: the video being written leaves no
        # output that looks complete, the ones finished before it keep theirs.
        video = current.video if current is not None else "a video"
        if current is not None:
            current.abandon()
        # A SinkError's own text promises a playable partial file, which abandon() just removed.
        cause = error.__context__ if isinstance(error, SinkError) else error
        reason = getattr(cause, "strerror", None) or cause or error
        raise OutputError(f"--out {args.out}: writing the outputs of {video} failed ({reason}); "
                          f"the videos finished before it ({len(results)}) are complete, and a "
                          "rerun with the same --out does only the rest") from None
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, folders or quoted globs; or fsspec URLs (s3://, gs://, "
                             "https://, file://) where that filesystem is installed")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", default=str(engines.DEFAULT_MODEL))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--address", default=None,
                        help="join a running Ray cluster (auto, or ray://HOST:10001); default: a "
                             "local Ray inside this process")
    parser.add_argument("--actors", type=int, default=2, help="inference actors (one engine each)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per actor")
    parser.add_argument("--gpus-per-actor", type=float, default=0, help="1 on a GPU cluster")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument("--chunk", type=int, default=300, help="frames per decode range")
    parser.add_argument("--batch", type=int, default=16, help="frames per actor call")
    parser.add_argument("--classes", default="drivable,objects", help="what the overlay shows")
    parser.add_argument("--no-video", action="store_true", help="skip the overlaid videos")
    parser.add_argument("--masks", action="store_true",
                        help="also write each frame's class ids: masks/frame_000123.png (pixel = "
                             "class id, the frame's size) and masks/classes.json, as run.py "
                             "--save-masks does")
    parser.add_argument("--hood", default="auto", metavar="auto|off|FRACTION",
                        help="the car's own hood, labelled ego and never painted: auto (found from "
                             "the motion in each recording's first 30 s), off, or the bottom FRACTION "
                             "of the frame (0.12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.actors < 1 or args.chunk < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--actors, --chunk, --batch and --threads must be at least 1")
    try:
        hood_from_spec(args.hood)
    except ValueError as error:
        parser.error(str(error))
    return args
