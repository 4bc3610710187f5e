"""TensorRT engine bookkeeping as plain functions: the build key, the cache path, the sidecar.

A TensorRT engine is only valid for the TensorRT version and the GPU it was built with, and for
the ONNX it came from. Every engine gets a JSON sidecar (`model.engine.json`) recording those
facts; the runtime compares them with what it finds and refuses a mismatch with the command
that rebuilds the engine. The cache key covers everything that changes the built engine, so the
same ONNX + TensorRT + GPU + precision + shapes reuses the engine and any change rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.base import EngineError

SIDECAR_SCHEMA = 1


@dataclass(frozen=True)
class BuildTarget:
    """Everything that determines a built engine."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # fp32 / fp16 / int8
    batch: tuple[int, int, int]  # min, opt, max of the optimisation profile
    input_size: tuple[int, int]  # height, width
    version_compatible: bool = False

    def key(self) -> str:
        """Stable 16-hex-digit key of the target (canonical JSON, sorted keys)."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def engine_cache_path(cache_dir: Path, onnx_path: Path, target: BuildTarget) -> Path:
    """Where the engine for this target lives in the cache (one file per distinct target)."""
    return Path(cache_dir) / f"{Path(onnx_path).stem}.{target.precision}.{target.key()}.engine"


def timing_cache_path(cache_dir: Path, target: BuildTarget) -> Path:
    """Timing caches depend on the GPU and TensorRT version, not on the model: share them."""
    gpu = "".join(ch if ch.isalnum() else "_" for ch in target.gpu_name)
    return Path(cache_dir) / f"timing.{gpu}.sm{target.compute_capability}.trt{target.tensorrt_version}.cache"


def sidecar_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + ".json")


def write_sidecar(engine_path: Path, target: BuildTarget, onnx_path: Path, classes: list[dict],
                  io_tensors: list[dict], build_seconds: float) -> dict[str, Any]:
    facts = {"schema": SIDECAR_SCHEMA, **asdict(target), "onnx_path": str(onnx_path),
             "classes": classes, "io_tensors": io_tensors, "build_seconds": round(build_seconds, 2),
             "key": target.key()}
    sidecar_path(engine_path).write_text(json.dumps(facts, indent=2))
    return facts


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    try:
        facts = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{engine_path} has no sidecar {path.name}, so its TensorRT version, GPU "
                          "and source ONNX are unknown; rebuild it with python -m engines.build") from None
    except (OSError, json.JSONDecodeError) as error:
        raise EngineError(f"sidecar {path} is unreadable ({error}); rebuild the engine with "
                          "python -m engines.build") from None
    if facts.get("schema") != SIDECAR_SCHEMA:
        raise EngineError(f"sidecar {path} has schema {facts.get('schema')!r}, expected "
                          f"{SIDECAR_SCHEMA}; rebuild the engine with python -m engines.build")
    return facts


def _major(version: str) -> str:
    return version.split(".")[0]


def sidecar_mismatches(facts: dict[str, Any], tensorrt_version: str, gpu_name: str,
                       compute_capability: str, onnx_sha256: str | None = None) -> list[str]:
    """What differs between the engine's build and this machine (empty: the engine is usable).

    A version-compatible engine runs on a newer TensorRT of the same major version; any other
    engine needs the exact version it was built with.
    """
    problems = []
    built = facts["tensorrt_version"]
    if facts.get("version_compatible"):
        newer_same_major = (_major(built) == _major(tensorrt_version)
                            and tuple(map(int, tensorrt_version.split(".")[:3]))
                            >= tuple(map(int, built.split(".")[:3])))
        if not newer_same_major:
            problems.append(f"built with TensorRT {built} (version-compatible), running {tensorrt_version}")
    elif built != tensorrt_version:
        problems.append(f"built with TensorRT {built}, running {tensorrt_version}")
    if facts["compute_capability"] != compute_capability or facts["gpu_name"] != gpu_name:
        problems.append(f"built for {facts['gpu_name']} (sm {facts['compute_capability']}), "
                        f"running on {gpu_name} (sm {compute_capability})")
    if onnx_sha256 is not None and facts["onnx_sha256"] != onnx_sha256:
        problems.append(f"built from a different ONNX (sha256 {facts['onnx_sha256'][:12]}…, "
                        f"the file now has {onnx_sha256[:12]}…)")
    return problems


def rebuild_command(facts: dict[str, Any], engine_path: Path) -> str:
    """The exact command that rebuilds this engine on this machine."""
    low, opt, high = facts["batch"]
    parts = ["python", "-m", "engines.build", "--onnx", facts["onnx_path"], "--precision",
             facts["precision"], "--batch", f"{low}:{opt}:{high}", "--out", str(engine_path)]
    if facts.get("version_compatible"):
        parts.append("--version-compatible")
    return " ".join(shlex.quote(p) for p in parts)


def refusal(engine_path: Path, facts: dict[str, Any], problems: list[str]) -> EngineError:
    """One line: what does not match, and the command that fixes it."""
    return EngineError(f"{engine_path} cannot run here: {'; '.join(problems)}. Rebuild it: "
                       f"{rebuild_command(facts, engine_path)}")
