"""Make a benchmark clip: an image sequence scaled to a camera's size and encoded as H.264.

    python -m realtime.clip ../shared/data/camvid/val --size 960 540 --frames 300 \
        --out runs/camvid960.mp4

The README's CPU figures come from exactly this clip: the 101 CamVid val frames (a real 15 Hz
drive) at 960x540, played forward, backward and forward again to 300 frames, libx264 at CRF 20
and 15 FPS, the way a dashcam stores its video. The file is written under a temporary name and
renamed when complete, so a clip that exists is whole.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path
from typing import Iterator

import av
import cv2

from engines.files import OutputError, check_writable
from engines.frames import FramesError, list_images
from engines.tool import run_tool


def back_and_forth(count: int) -> Iterator[int]:
    """0, 1, ..., count-1, count-2, ..., 0, 1, ...: a sequence played forward and backward
    without showing a turning frame twice (a still frame would make the motion stutter)."""
    if count == 1:
        yield from itertools.repeat(0)
        return
    period = 2 * (count - 1)
    for step in itertools.count():
        phase = step % period
        yield phase if phase < count else period - phase


def write_clip(images: list[Path], out: Path, size: tuple[int, int], frames: int | None = None,
               fps: int = 15, crf: int = 20) -> int:
    """Encode `images` (resized to `size` = (width, height)) to H.264 at `out`, played back and
    forth to `frames` frames (default: each image once); returns the frames written."""
    total = frames or len(images)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        with av.open(str(partial), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for index in itertools.islice(back_and_forth(len(images)), total):
                image = cv2.imread(str(images[index]))
                if image is None:
                    raise FramesError(f"{images[index]} is not a readable image; remove it or "
                                      "give a folder of images only")
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
            container.mux(stream.encode())
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return total


def main(args: argparse.Namespace) -> int:
    """Check the input and the output first, then write the clip."""
    images = list_images(args.images)
    if not images:
        print(f"error: {args.images}: no images found; give a folder of images or a quoted glob "
              "such as 'frames/*.png'")
        return 2
    try:
        check_writable(args.out, "--out")
        written = write_clip(images, args.out, tuple(args.size), args.frames, args.fps, args.crf)
    except (OutputError, FramesError) as error:  # checked, or found unreadable: nothing written
        print(f"error: {error}")
        return 2
    except OSError as error:  # a full disk while encoding: nothing is left at --out
        print(f"error: --out {args.out}: writing failed ({error.strerror or error}); nothing was "
              "written; free space or choose another path")
        return 1
    print(f"wrote {args.out}: {written} frames, {args.size[0]}x{args.size[1]}, {args.fps} FPS, "
          f"H.264 CRF {args.crf}, from {len(images)} images")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="image folder or quoted glob, in name order")
    parser.add_argument("--out", type=Path, required=True, help="the clip (.mp4, .mkv, .mov)")
    parser.add_argument("--size", type=int, nargs=2, default=(960, 540), metavar=("W", "H"))
    parser.add_argument("--frames", type=int, default=None,
                        help="length; the images play forward and backward until it is reached "
                             "(default: each image once)")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--crf", type=int, default=20, help="libx264 quality (lower: larger, sharper)")
    args = parser.parse_args(argv)
    if min(args.size) < 2 or any(side % 2 for side in args.size):
        parser.error("--size needs even sides of at least 2 pixels (H.264 4:2:0)")
    if args.frames is not None and args.frames < 1 or args.fps < 1 or not 0 <= args.crf <= 51:
        parser.error("--frames and --fps must be at least 1, --crf 0-51")
    return args


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
