"""Build a TensorRT engine from a contract ONNX.

    python -m engines.build --onnx engines/models/roadseg.onnx --precision fp16 --out roadseg.fp16.engine
    python -m engines.build --onnx engines/models/roadseg.onnx --precision int8 \\
        --calib ../shared/data/camvid/train --batch 1:4:8 --out roadseg.int8.engine

Precision is decided in the ONNX (TensorRT 11 removed the FP16/INT8 builder flags and the
calibrator API): FP16 converts the graph's float tensors, INT8 inserts Q/DQ pairs computed from
calibration frames (python -m calibration). The network is then built strongly typed (10.12+
and 11); older 10.x builds the same ONNX with the FP16/INT8 flags. A timing cache beside the
engine cache makes rebuilds take seconds; a JSON sidecar records what the engine is valid for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from engines.base import EngineError
from engines.cache import (BuildTarget, engine_cache_path, file_sha256, timing_cache_path,
                           write_sidecar)

ENGINE_CACHE_DIR = Path(os.environ.get("ROADSEG_CACHE", Path.home() / ".cache" / "roadseg")) / "engines"


def parse_batch(text: str) -> tuple[int, int, int]:
    """"1:4:8" → (1, 4, 8); "4" → (1, 4, 4)."""
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise EngineError(f"--batch {text!r}: give MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def read_contract(onnx_path: Path) -> tuple[tuple[int, int], list[dict]]:
    """Input (height, width) and class table from the ONNX, without building anything."""
    import onnx

    from engines.base import METADATA_KEY

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    meta = json.loads({p.key: p.value for p in model.metadata_props}.get(METADATA_KEY, "{}"))
    if len(dims) != 4 or dims[3].dim_value != 3 or not dims[1].dim_value:
        raise EngineError(f"{onnx_path}: the TensorRT path needs the project's contract input "
                          "uint8 [N, H, W, 3] with static H and W (export with training.export)")
    return (dims[1].dim_value, dims[2].dim_value), meta.get("classes", [])


class ProgressPrinter:
    """Prints TensorRT build phases (IProgressMonitor, TensorRT 10+), one line per phase."""

    def __init__(self, trt: Any):
        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.started: dict[str, float] = {}

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                self.started[phase_name] = time.perf_counter()
                indent = "  " if parent_phase else ""
                print(f"{indent}[build] {phase_name} ({num_steps} steps)", file=sys.stderr, flush=True)

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True  # returning False would cancel the build

            def phase_finish(self, phase_name: str) -> None:
                seconds = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
                if seconds > 1:
                    print(f"[build] {phase_name} done in {seconds:.1f} s", file=sys.stderr, flush=True)

        self.monitor = Monitor()


class EngineBuilder:
    """Parses an ONNX, logs its I/O tensors, and builds a serialized engine with a timing cache."""

    def __init__(self, workspace_gib: float = 2.0, verbose: bool = False):
        from engines.tensorrt_backend import import_tensorrt

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
        if hasattr(trt, "IProgressMonitor"):
            self.progress = ProgressPrinter(trt)
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
        print(f"[build] {kind} {entry['name']}: shape {entry['shape']} dtype {entry['dtype']}",
              file=sys.stderr)

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
        print(f"[build] timing cache {timing_cache} ({'reused' if cache_bytes else 'new'})", file=sys.stderr)
        started = time.perf_counter()
        serialized = self.builder.build_serialized_network(self.network, self.config)
        seconds = time.perf_counter() - started
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
                 cache_dir: Path = ENGINE_CACHE_DIR, device_index: int = 0) -> Path:
    """Lower the precision if asked, build, and write engine + sidecar; returns the engine path.

    With `out` None the engine goes into the cache under its BuildTarget key, and an existing
    engine for the same target is reused without building.
    """
    from calibration.core import lower_precision
    from engines.tensorrt_backend import gpu_facts, import_tensorrt

    trt = import_tensorrt(allow_lean=False)
    input_size, classes = read_contract(onnx_path)
    gpu_name, capability = gpu_facts(device_index)
    target = BuildTarget(file_sha256(onnx_path), trt.__version__, gpu_name, capability, precision,
                         batch, input_size, version_compatible)
    engine_path = out or engine_cache_path(cache_dir, onnx_path, target)
    if out is None and engine_path.exists():
        print(f"[build] reusing cached engine {engine_path}", file=sys.stderr)
        return engine_path
    built_from = Path(onnx_path)
    if precision in ("fp16", "int8"):
        lowered = Path(cache_dir) / f"{Path(onnx_path).stem}.{target.onnx_sha256[:16]}.{precision}.onnx"
        lowered.parent.mkdir(parents=True, exist_ok=True)
        built_from, facts = lower_precision(onnx_path, precision, lowered, calib, calib_frames)
        print(f"[build] {precision} ONNX {built_from}: {facts}", file=sys.stderr)
    builder = EngineBuilder(workspace_gib)
    builder.create_network(built_from, precision)
    print(f"[build] building {precision} engine for {gpu_name} (sm {capability}), batch "
          f"{batch[0]}:{batch[1]}:{batch[2]}, {input_size[1]}x{input_size[0]}; this takes a "
          "minute the first time", file=sys.stderr, flush=True)
    seconds = builder.build(engine_path, input_size, batch, timing_cache_path(cache_dir, target),
                            version_compatible)
    write_sidecar(engine_path, target, Path(onnx_path).resolve(), classes, builder.io_tensors, seconds)
    print(f"[build] wrote {engine_path} in {seconds:.1f} s", file=sys.stderr)
    return engine_path


def main(args: argparse.Namespace) -> int:
    try:
        build_engine(args.onnx, args.precision, args.out, args.calib, args.calib_frames,
                     parse_batch(args.batch), args.workspace, args.version_compatible, args.cache_dir)
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
    parser.add_argument("--cache-dir", type=Path, default=ENGINE_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=None, help="engine path (default: the cache)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
