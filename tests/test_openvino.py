"""The OpenVINO backend on the shipped model and real CamVid frames, against ONNX Runtime."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

import engines
from engines.frames import sample_frames
from engines.lowering import lower_precision
from helpers import camvid_or_skip

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino is not installed (pip install -e \".[openvino]\")")


@pytest.fixture(scope="module")
def frames():
    return sample_frames(camvid_or_skip() / "val", 12, (360, 480))


@pytest.fixture(scope="module")
def reference(frames):
    with engines.load(engines.DEFAULT_MODEL, "onnxruntime") as engine:
        return engine.infer(frames)


def test_fp32_equals_onnx_runtime(frames, reference):
    with engines.load(engines.DEFAULT_MODEL, "openvino", precision="fp32", threads=2) as engine:
        assert engine.info.backend == "openvino" and engine.info.precision == "fp32"
        assert [c.name for c in engine.info.classes][3] == "Road"  # class table from rt_info
        labels = np.concatenate([engine.infer(frames[i:i + 1]) for i in range(len(frames))])
    assert (labels == reference).mean() >= 0.999


def test_int8_qdq_model_runs_as_int8(frames, reference, tmp_path):
    calib = sample_frames(camvid_or_skip() / "train", 16, (360, 480))
    int8, _ = lower_precision(engines.DEFAULT_MODEL, "int8", tmp_path / "m.int8.onnx", calib,
                              method="minmax", cache_dir=tmp_path)
    with engines.load(int8, "openvino") as engine:
        assert engine.info.precision == "int8"
        assert (engine.infer(frames) == reference).mean() >= 0.99
    assert engines.choose_backend(int8)[0] == "openvino"


def test_ir_keeps_the_contract_and_opens_by_suffix(frames, reference, tmp_path):
    import openvino as ov

    core = ov.Core()
    ov.save_model(core.read_model(str(engines.DEFAULT_MODEL)), str(tmp_path / "m.xml"))
    assert engines.backend_for(tmp_path / "m.xml") == "openvino"
    with engines.load(tmp_path / "m.xml", precision="fp32") as engine:
        assert engine.info.classes == engines.load(engines.DEFAULT_MODEL, "onnxruntime").info.classes
        assert (engine.infer(frames) == reference).mean() >= 0.999


def test_parallel_calls_from_two_threads_match_serial(frames):
    with engines.load(engines.DEFAULT_MODEL, "openvino", threads=1, streams=2) as engine:
        serial = [engine.infer(frames[i:i + 1]) for i in range(len(frames))]
        results: dict[int, np.ndarray] = {}

        def work(start: int) -> None:
            for index in range(start, len(frames), 2):
                results[index] = engine.infer(frames[index:index + 1])

        threads = [threading.Thread(target=work, args=(s,)) for s in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(np.array_equal(results[i], serial[i]) for i in range(len(frames)))


def test_auto_follows_the_measured_rule():
    import openvino as ov

    from engines.openvino_backend import cpu_has_bf16

    expected = "openvino" if cpu_has_bf16(ov.Core()) else "onnxruntime"
    assert engines.backend_for(engines.DEFAULT_MODEL) == expected
    assert engines.backend_for("model.pt") == "torch"


def test_unreadable_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<net>not a model")
    with pytest.raises(engines.EngineError, match="not a loadable OpenVINO model"):
        engines.load(bad)
    with pytest.raises(engines.EngineError, match="fp32 or bf16"):
        engines.load(engines.DEFAULT_MODEL, "openvino", precision="int8")


def test_int8_sibling_stands_in_only_without_bf16_and_within_budget(tmp_path):
    import shutil

    import onnx

    from engines.contract import record_accuracy
    from engines.openvino_backend import int8_variant

    shipped = engines.MODELS_DIR / "roadseg.int8.onnx"
    found = int8_variant(engines.DEFAULT_MODEL, has_bf16=False)
    assert found is not None and found[0] == shipped and "within 0.5" in found[1]
    assert int8_variant(engines.DEFAULT_MODEL, has_bf16=True) is None  # bf16: as fast, lossless
    # A sibling whose recorded loss is over budget is not used.
    shutil.copy(engines.DEFAULT_MODEL, tmp_path / "m.onnx")
    lossy = onnx.load(str(shipped))
    record_accuracy(lossy, {"delta_miou_points": {"openvino": -1.2}})
    onnx.save(lossy, str(tmp_path / "m.int8.onnx"))
    assert int8_variant(tmp_path / "m.onnx", has_bf16=False) is None
    assert int8_variant(tmp_path / "nothing.onnx", has_bf16=False) is None
