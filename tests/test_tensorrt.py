"""TensorRT path: cache key and sidecar logic as plain functions, the runtime API checked
against the real lean runtime module, and the real build where TensorRT and a GPU exist."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

import engines
from engines.base import EngineError
from engines.build import parse_batch
from engines.contract import read_contract
from engines.cache import (BuildTarget, engine_cache_path, read_sidecar, refusal, sidecar_mismatches,
                           timing_cache_path, write_sidecar)

TARGET = BuildTarget("ab" * 32, "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0", "fp16", (1, 4, 8), (360, 480))


def test_cache_key_reuses_same_target_and_changes_with_any_field(tmp_path):
    assert TARGET.key() == dataclasses.replace(TARGET).key()
    changes = {"onnx_sha256": "cd" * 32, "tensorrt_version": "11.4.0.106", "gpu_name": "NVIDIA L4",
               "compute_capability": "8.9", "precision": "int8", "batch": (1, 1, 1),
               "input_size": (720, 1280), "version_compatible": True}
    keys = {TARGET.key()}
    for field, value in changes.items():
        keys.add(dataclasses.replace(TARGET, **{field: value}).key())
    assert len(keys) == len(changes) + 1
    path = engine_cache_path(tmp_path, tmp_path / "roadseg.onnx", TARGET)
    assert path.name == f"roadseg.fp16.{TARGET.key()}.engine"
    # One timing cache per GPU and TensorRT version, shared by models and precisions.
    assert timing_cache_path(tmp_path, TARGET) == timing_cache_path(
        tmp_path, dataclasses.replace(TARGET, precision="int8", onnx_sha256="00" * 32))


def _sidecar(tmp_path, **changes):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized engine")
    write_sidecar(engine, dataclasses.replace(TARGET, **changes), tmp_path / "m.onnx",
                  [{"id": 0, "name": "Road", "color": [128, 64, 128], "group": "drivable"}],
                  [{"kind": "input", "name": "image", "shape": [-1, 360, 480, 3], "dtype": "UINT8"}], 12.5)
    return engine, read_sidecar(engine)


def test_matching_sidecar_has_no_mismatch(tmp_path):
    _, facts = _sidecar(tmp_path)
    assert sidecar_mismatches(facts, "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0", "ab" * 32) == []


def test_mismatches_are_named_and_refused_with_the_rebuild_command(tmp_path):
    engine, facts = _sidecar(tmp_path)
    problems = sidecar_mismatches(facts, "10.14.1.48", "NVIDIA L4", "8.9", "cd" * 32)
    assert len(problems) == 3
    message = str(refusal(engine, facts, problems))
    assert "TensorRT 10.13.0.35" in message and "NVIDIA L4" in message and "different ONNX" in message
    assert "python -m engines.build --onnx" in message and "--precision fp16 --batch 1:4:8" in message
    assert "\n" not in message


def test_version_compatible_engine_accepts_newer_tensorrt_of_the_same_major(tmp_path):
    _, facts = _sidecar(tmp_path, version_compatible=True)
    gpu = ("NVIDIA H100 80GB HBM3", "9.0")
    assert sidecar_mismatches(facts, "10.14.1.48", *gpu) == []
    assert sidecar_mismatches(facts, "10.12.0.1", *gpu)  # older
    assert sidecar_mismatches(facts, "11.4.0.106", *gpu)  # another major


def test_engine_without_sidecar_is_refused(tmp_path):
    engine = tmp_path / "orphan.engine"
    engine.write_bytes(b"x")
    with pytest.raises(EngineError, match="no sidecar"):
        engines.load(engine)


def test_engine_file_on_a_machine_without_tensorrt_or_gpu_says_what_to_install(tmp_path):
    if importlib.util.find_spec("pycuda") is not None:
        pytest.skip("pycuda is installed here; this checks the message on machines without it")
    engine, _ = _sidecar(tmp_path)
    with pytest.raises(EngineError, match="pip install"):
        engines.load(engine)


def test_batch_profile_parsing():
    assert parse_batch("1:4:8") == (1, 4, 8) and parse_batch("4") == (1, 4, 4)
    with pytest.raises(EngineError, match="MIN:OPT:MAX"):
        parse_batch("8:4:1")


def test_contract_is_read_from_the_onnx(assets):
    size, classes = read_contract(engines.DEFAULT_MODEL)
    assert size == (360, 480) and classes[3]["name"] == "Road"
    with pytest.raises(EngineError, match="contract input"):
        read_contract(assets["logits"])


LEAN = next((m for m in ("tensorrt_lean", "tensorrt_lean_bindings") if importlib.util.find_spec(m)), None)


@pytest.mark.skipif(LEAN is None, reason="the TensorRT lean runtime is not installed (dev extra on Linux x86-64)")
def test_runtime_calls_exist_in_the_real_lean_module():
    trt = importlib.import_module(LEAN)
    # Every TensorRT call the backend makes at run time, checked against the real module.
    for owner, names in {
        trt: ["Logger", "Runtime", "TensorIOMode", "DataType"],
        trt.Runtime: ["deserialize_cuda_engine", "engine_host_code_allowed"],
        trt.ICudaEngine: ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                          "get_tensor_shape", "create_execution_context"],
        trt.IExecutionContext: ["set_input_shape", "set_tensor_address", "get_tensor_shape",
                                "execute_async_v3"],
    }.items():
        for name in names:
            assert hasattr(owner, name), f"{owner.__name__}.{name}"
    from engines.tensorrt_backend import NUMPY_DTYPES

    assert set(NUMPY_DTYPES) <= set(trt.DataType.__members__)
    assert trt.TensorIOMode.INPUT != trt.TensorIOMode.OUTPUT
    assert trt.Logger(trt.Logger.WARNING) is not None


def _tensorrt_and_gpu() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT (full, with the builder) is not installed"
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed"
    return None


@pytest.mark.skipif(_tensorrt_and_gpu() is not None, reason=str(_tensorrt_and_gpu()))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_run_real_engine(tmp_path, precision):
    from engines.build import build_engine

    path = build_engine(engines.DEFAULT_MODEL, precision, tmp_path / f"m.{precision}.engine",
                        batch=(1, 2, 4), cache_dir=tmp_path)
    engine = engines.load(path)
    frames = np.random.default_rng(0).integers(0, 256, (2, 360, 480, 3), dtype=np.uint8)
    reference = engines.load(engines.DEFAULT_MODEL).infer(frames)
    assert (engine.infer(frames) == reference).mean() > 0.99
    assert json.loads((tmp_path / f"m.{precision}.engine.json").read_text())["precision"] == precision
