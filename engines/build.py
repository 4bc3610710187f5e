"""Build a TensorRT engine from a contract ONNX.

    python -m engines.build --onnx engines/models/roadseg.onnx --precision fp16 --out roadseg.fp16.engine
    python -m engines.build --onnx engines/models/roadseg.onnx --precision int8 \\
        --calib ../shared/data/camvid/train --batch 1:4:8 --out roadseg.int8.engine

Precision is decided in the ONNX (TensorRT 11 removed the FP16/INT8 builder flags and the
calibrator API): FP16 converts the graph's float tensors, INT8 inserts Q/DQ pairs computed from
calibration frames (python -m calibration). The network is then built strongly typed (10.12+
and 11); older 10.x builds the same ONNX with the FP16/INT8 flags. A timing cache beside the
engine cache makes rebuilds take seconds; a JSON sidecar records what the engine is valid for.
Ctrl-C during a build cancels it between steps (the progress monitor returns False) and
writes nothing.

This module needs TensorRT, onnx and ONNX Runtime's quantizer; it never imports the training
code or the live application.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engines.base import EngineError
from engines.cache import BuildTarget, engine_cache_path, timing_cache_path, write_sidecar
from engines.contract import read_contract
from engines.files import cache_root, file_sha256
from engines.tensorrt_runtime import gpu_facts, import_tensorrt
from engines.tool import run_tool

log = logging.getLogger(__name__)


class BuildCancelled(EngineError):
    """The user stopped a build with Ctrl-C; nothing was written."""


def engine_cache_dir() -> Path:
    return cache_root() / "engines"


def parse_batch(text: str) -> tuple[int, int, int]:
    """"1:4:8" → (1, 4, 8); "4" → (1, 4, 4)."""
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise EngineError(f"--batch {text!r}: give MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


class ProgressMonitor:
    """Logs TensorRT build phases (IProgressMonitor, TensorRT 10+) and cancels the build when
    `cancel` is set: step_complete returning False is TensorRT's way to stop between steps."""

    def __init__(self, trt: Any, cancel: threading.Event):
        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.started: dict[str, float] = {}

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                self.started[phase_name] = time.perf_counter()
                log.info("%s%s (%d steps)", "  " if parent_phase else "", phase_name, num_steps)

            def step_complete(self, phase_name: str, step: int) -> bool:
                return not cancel.is_set()

            def phase_finish(self, phase_name: str) -> None:
                seconds = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
                if seconds > 1:
                    log.info("%s done in %.1f s", phase_name, seconds)

        self.monitor = Monitor()


class CancelOnInterrupt:
    """While active on the main thread, Ctrl-C sets `event` instead of raising inside
    TensorRT's C++ build (where a KeyboardInterrupt would only land after the build)."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.previous: Any = None

    def __enter__(self) -> "CancelOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class EngineBuilder:
    """Parses an ONNX, logs its I/O tensors, and builds a serialized engine with a timing cache."""

    def __init__(self, workspace_gib: float = 2.0, verbose: bool = False):
        self.trt = import_tensorrt(allow_lean=False)
        if not hasattr(self.trt, "Builder"):
            raise EngineError("this TensorRT install has no builder (lean runtime only); install "
                              "the full tensorrt package to build engines")
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, namespace="")
        self.builder = trt.Builder(self.logger)
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        self.cancel = threading.Event()
        if hasattr(trt, "IProgressMonitor"):
            self.progress = ProgressMonitor(trt, self.cancel)
            self.config.progress_monitor = self.progress.monitor
        self.strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        self.io_tensors: list[dict[str, Any]] = []

    def create_network(self, onnx_path: Path, precision: str) -> None:
        trt = self.trt
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.strongly_typed else 0
        self.network = self.builder.create_network(flags)
        self.parser = trt.OnnxParser(self.network, self.logger)
        if not self.parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(self.parser.get_error(i)) for i in range(self.parser.num_errors))
            raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
        if not self.strongly_typed:
            # TensorRT 10 before 10.12: the lowered ONNX carries the precision, the flags allow it.
            if precision == "fp16":
                self.config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                self.config.set_flag(trt.BuilderFlag.INT8)
        for index in range(self.network.num_inputs):
            self._log_tensor("input", self.network.get_input(index))
        for index in range(self.network.num_outputs):
            self._log_tensor("output", self.network.get_output(index))

    def _log_tensor(self, kind: str, tensor: Any) -> None:
        entry = {"kind": kind, "name": tensor.name, "shape": list(tensor.shape),
                 "dtype": str(tensor.dtype).split(".")[-1]}
        self.io_tensors.append(entry)
        log.info("%s %s: shape %s dtype %s", kind, entry["name"], entry["shape"], entry["dtype"])

    def build(self, out: Path, input_size: tuple[int, int], batch: tuple[int, int, int],
              timing_cache: Path, version_compatible: bool = False) -> float:
        """Build and write the engine; returns the build time in seconds."""
        trt = self.trt
        height, width = input_size
        profile = self.builder.create_optimization_profile()
        input_name = self.network.get_input(0).name
        profile.set_shape(input_name, (batch[0], height, width, 3), (batch[1], height, width, 3),
                          (batch[2], height, width, 3))
        self.config.add_optimization_profile(profile)
        if version_compatible:
            self.config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            self.config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
        cache_bytes = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = self.config.create_timing_cache(cache_bytes)
        self.config.set_timing_cache(cache, ignore_mismatch=False)
        log.info("timing cache %s (%s)", timing_cache, "reused" if cache_bytes else "new")
        started = time.perf_counter()
        with CancelOnInterrupt(self.cancel):
            serialized = self.builder.build_serialized_network(self.network, self.config)
        seconds = time.perf_counter() - started
        if self.cancel.is_set():
            raise BuildCancelled(f"build cancelled after {seconds:.0f} s; no engine was written")
        if serialized is None:
            raise EngineError("TensorRT failed to build the engine (see the log above)")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(serialized)
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(self.config.get_timing_cache().serialize())
        return seconds


def build_engine(onnx_path: Path, precision: str, out: Path | None = None, calib: str | None = None,
                 calib_frames: int = 100, batch: tuple[int, int, int] = (1, 1, 1),
                 workspace_gib: float = 2.0, version_compatible: bool = False,
                 cache_dir: Path | None = None, device_index: int = 0) -> Path:
    """Lower the precision if asked, build, and write engine + sidecar; returns the engine path.

    With `out` None the engine goes into the cache under its BuildTarget key, and an existing
    engine for the same target is reused without building. `calib` (int8) is a video, image
    folder or glob; its frames are sampled at the model's input size.
    """
    from engines.frames import sample_frames
    from engines.lowering import lower_precision

    cache_dir = Path(cache_dir) if cache_dir else engine_cache_dir()
    trt = import_tensorrt(allow_lean=False)
    input_size, classes = read_contract(onnx_path)
    gpu_name, capability = gpu_facts(device_index)
    target = BuildTarget(file_sha256(onnx_path), trt.__version__, gpu_name, capability, precision,
                         batch, input_size, version_compatible)
    engine_path = out or engine_cache_path(cache_dir, onnx_path, target)
    if out is None and engine_path.exists():
        log.info("reusing cached engine %s", engine_path)
        return engine_path
    built_from = Path(onnx_path)
    if precision in ("fp16", "int8"):
        lowered = Path(cache_dir) / f"{Path(onnx_path).stem}.{target.onnx_sha256[:16]}.{precision}.onnx"
        lowered.parent.mkdir(parents=True, exist_ok=True)
        frames = sample_frames(calib, calib_frames, input_size) if precision == "int8" and calib else None
        try:
            built_from, facts = lower_precision(onnx_path, precision, lowered, frames)
        except ValueError as error:  # int8 without --calib
            raise EngineError(str(error)) from None
        log.info("%s ONNX %s: %s", precision, built_from, facts)
    builder = EngineBuilder(workspace_gib)
    builder.create_network(built_from, precision)
    log.info("building %s engine for %s (sm %s), batch %d:%d:%d, %dx%d; this takes a minute "
             "the first time (Ctrl-C cancels)", precision, gpu_name, capability, *batch,
             input_size[1], input_size[0])
    seconds = builder.build(engine_path, input_size, batch, timing_cache_path(cache_dir, target),
                            version_compatible)
    write_sidecar(engine_path, target, Path(onnx_path).resolve(), classes, builder.io_tensors, seconds)
    log.info("wrote %s in %.1f s", engine_path, seconds)
    return engine_path


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="[build] %(message)s")
    try:
        build_engine(args.onnx, args.precision, args.out, args.calib, args.calib_frames,
                     parse_batch(args.batch), args.workspace, args.version_compatible, args.cache_dir)
    except BuildCancelled as error:
        print(f"error: {error}", file=sys.stderr)
        return 130
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engines.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    parser.add_argument("--calib", default=None, help="int8: video, image folder or quoted glob")
    parser.add_argument("--calib-frames", type=int, default=100)
    parser.add_argument("--batch", default="1:1:1", help="MIN:OPT:MAX of the dynamic batch")
    parser.add_argument("--workspace", type=float, default=2.0, help="GiB")
    parser.add_argument("--version-compatible", action="store_true",
                        help="runs on newer TensorRT and on the lean runtime (tensorrt_lean)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="engine cache (default $ROADSEG_CACHE/engines, ~/.cache/roadseg/engines)")
    parser.add_argument("--out", type=Path, default=None, help="engine path (default: the cache)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
