"""FP16 and INT8 Q/DQ lowering on the shipped model with real frames, through ONNX Runtime."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest

import engines
from engines.contract import INT8_BUDGET_POINTS, accuracy_within_budget, int8_sibling, read_metadata
from engines.frames import _evenly, sample_frames
from engines.lowering import lower_precision, matching_nodes, qdq_facts
from calibration.report import accuracy_report
from helpers import camvid_or_skip, write_video


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    camvid = camvid_or_skip()
    root = tmp_path_factory.mktemp("int8")
    out, facts = lower_precision(engines.DEFAULT_MODEL, "int8", root / "m.int8.onnx",
                                 sample_frames(camvid / "train", 8, (360, 480)), method="minmax",
                                 cache_dir=root / "cache")
    return out, facts, root


def test_qdq_model_has_the_form_tensorrt_accepts(int8_model):
    out, facts, _ = int8_model
    model = onnx.load(str(out))
    assert facts["cache_hit"] is False and facts["calibration_frames"] == 8
    checked = qdq_facts(model)
    assert checked["qdq_nodes"] > 0 and checked["opset"] >= 13
    assert checked["all_zero_points_zero"] and checked["zero_point_types"] == ["int8"]
    assert checked["conv_weights_quantized"] >= 10 and checked["per_channel_weights"]
    assert checked["int32_bias_dequantize"] == 0
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_qdq_model_runs_and_agrees_with_fp32(int8_model):
    frames = sample_frames(camvid_or_skip() / "val", 4, (360, 480))
    int8 = engines.load(int8_model[0])
    fp32 = engines.load(engines.DEFAULT_MODEL)
    assert int8.info.precision == "int8"
    agreement = (int8.infer(frames) == fp32.infer(frames)).mean()
    assert agreement > 0.9


def test_calibration_cache_is_reused(int8_model, tmp_path):
    camvid = camvid_or_skip()
    _, first, root = int8_model
    again, facts = lower_precision(engines.DEFAULT_MODEL, "int8", tmp_path / "again.onnx",
                                   sample_frames(camvid / "train", 8, (360, 480)), method="minmax",
                                   cache_dir=root / "cache")
    assert facts["cache_hit"] is True and facts["cache"] == first["cache"]
    assert onnx.load(str(again)).graph == onnx.load(str(int8_model[0])).graph


def test_fp16_keeps_io_types_and_runs(tmp_path):
    frames = sample_frames(camvid_or_skip() / "val", 2, (360, 480))
    out, _ = lower_precision(engines.DEFAULT_MODEL, "fp16", tmp_path / "m.fp16.onnx")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    weights = [t for t in model.graph.initializer if t.dims and len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    # ONNX Runtime runs the file's own FP16 (auto may pick OpenVINO bf16 on a CPU that has it).
    fp16 = engines.load(out, "onnxruntime")
    assert fp16.info.precision == "fp16"
    assert (fp16.infer(frames) == engines.load(engines.DEFAULT_MODEL).infer(frames)).mean() > 0.999


@pytest.mark.parametrize("name", [n for n in engines.shipped_models() if not n.endswith(".int8")
                                  and int8_sibling(engines.resolve_model(n)).is_file()])
def test_shipped_int8_records_its_accuracy_cost_on_every_cpu_runtime(name):
    # --backend auto lets the INT8 sibling compete on a runtime only where its metadata holds
    # the accuracy it costs there: a rebuild reported on one runtime would silently fall back
    # to a slower float form on the other.
    meta = read_metadata(onnx.load(str(int8_sibling(engines.resolve_model(name)))))
    for runtime in ("onnxruntime", "openvino"):
        delta = accuracy_within_budget(meta, runtime)
        assert delta is not None and -delta <= INT8_BUDGET_POINTS, runtime


def test_int8_without_calibration_frames_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--calib"):
        lower_precision(engines.DEFAULT_MODEL, "int8", tmp_path / "x.onnx")


def test_frames_are_taken_evenly_and_deterministically(tmp_path):
    assert _evenly(10, 4) == [0, 3, 6, 9]
    assert _evenly(3, 5) == [0, 1, 2]
    video = write_video(tmp_path / "v.mp4", 30, size=(160, 120))
    first = sample_frames(video, 5, (48, 64))
    assert first.shape == (5, 48, 64, 3)
    assert np.array_equal(first, sample_frames(video, 5, (48, 64)))
    for index in range(6):
        cv2.imwrite(str(tmp_path / f"f{index}.png"), np.full((8, 8, 3), index * 40, np.uint8))
    picked = sample_frames(tmp_path / "*.png", 3, (8, 8))
    assert [int(f[0, 0, 0]) for f in picked] == [0, 80, 200]  # images 0, 2 (round 2.5), 5


def test_accuracy_report_runs_a_model_at_its_own_input_size():
    # roadseg-360x270 takes 360x270 frames; the report fits CamVid's 480x360 frames to it and
    # compares the labels at the frames' size (it once fed 480x360 frames and crashed).
    camvid = camvid_or_skip()
    fp32 = engines.resolve_model("roadseg-360x270")
    report = accuracy_report(fp32, {"int8": int8_sibling(fp32)}, camvid, limit=4,
                             runtimes=("onnxruntime",))
    row = report["results"]["onnxruntime int8"]
    assert report["results"]["onnxruntime fp32"]["agreement_with_fp32"] == 1.0
    assert 0.98 < row["agreement_with_fp32"] < 1.0 and row["mean_iou"] > 0.5


def test_layers_kept_in_float_are_named_or_matched_by_pattern(tmp_path):
    # --exclude takes node names or shell-style patterns; the INT8 model keeps exactly those
    # convolutions in float (no Q/DQ on their weights) and records what was excluded; a pattern
    # that matches nothing is refused in one line rather than silently quantising everything.
    model = onnx.load(str(engines.DEFAULT_MODEL))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    stem = matching_nodes(model, ["*/stem/*"])
    assert stem and all("/stem/" in name for name in stem)
    assert matching_nodes(model, [convs[-1], "*/stem/*"]) == [convs[-1], *stem]
    with pytest.raises(ValueError, match="matches no node"):
        matching_nodes(model, ["*/no-such-layer/*"])
    frames = sample_frames(camvid_or_skip() / "train", 4, (360, 480))
    out, _ = lower_precision(engines.DEFAULT_MODEL, "int8", tmp_path / "m.int8.onnx", frames,
                             cache_dir=tmp_path, exclude=["*/stem/*"])
    quantized = onnx.load(str(out))
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    stem_convs = [n for n in quantized.graph.node if n.op_type == "Conv" and "/stem/" in n.name]
    other_convs = [n for n in quantized.graph.node if n.op_type == "Conv" and "/stem/" not in n.name]
    assert stem_convs and not any(n.input[1] in dequantized for n in stem_convs)
    assert all(n.input[1] in dequantized for n in other_convs)
    assert read_metadata(quantized)["lowering"]["exclude_patterns"] == ["*/stem/*"]
