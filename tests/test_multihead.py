"""Users' multi-head models: TwinLiteNet (drivable area + lane lines, a real third-party ONNX)
run with a labels file that maps each output to its classes, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import engines
from helpers import REPO, run_app

TWINLITENET = REPO.parent / "shared" / "teachers" / "twinlitenet" / "twinlitenet.onnx"
BDD = REPO.parent / "shared" / "data" / "bdd-samples"
pytestmark = pytest.mark.skipif(not TWINLITENET.is_file() or not BDD.is_dir(),
                                reason="../shared/teachers/twinlitenet or ../shared/data/bdd-samples is absent")

LABELS = {
    "input": {"color": "rgb", "scale": 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
    "outputs": {
        "drivable": {"classes": [{"name": "background", "group": "background"},
                                 {"name": "drivable area", "group": "drivable", "color": [128, 64, 128]}]},
        "lanes": {"classes": [{"name": "no lane", "group": "background"},
                              {"name": "lane line", "group": "lane", "color": [255, 255, 255]}]},
    },
}


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("twin") / "twinlitenet.json"
    path.write_text(json.dumps(LABELS))
    return path


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    paths = sorted(BDD.glob("*.jpg"))[:4]
    return np.stack([cv2.resize(cv2.imread(str(p)), (640, 360), interpolation=cv2.INTER_AREA)
                     for p in paths])


def expected_ids(frames: np.ndarray) -> np.ndarray:
    """The merged map computed by hand from the model's two heads (lanes over drivable)."""
    session = ort.InferenceSession(str(TWINLITENET), providers=["CPUExecutionProvider"])
    rgb = frames[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255
    drivable, lanes = session.run(["drivable", "lanes"], {"image": rgb})
    return np.where(lanes.argmax(1) == 1, 2, drivable.argmax(1)).astype(np.uint8)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_heads_are_merged_with_lanes_over_the_drivable_area(labels_file, frames, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed")
    with engines.load(TWINLITENET, backend, labels_file, precision="fp32") as engine:
        assert [c.name for c in engine.info.classes] == ["background", "drivable area", "lane line"]
        assert engine.info.input_size == (360, 640)
        got = engine.infer(frames)
    want = expected_ids(frames)
    assert (got == want).mean() >= (1.0 if backend == "onnxruntime" else 0.999)
    assert (got == 2).any() and (got == 1).any()  # both heads show up on real frames


def test_twinlitenet_end_to_end_writes_a_png_per_input(labels_file, tmp_path):
    out = tmp_path / "overlays"
    result = run_app("--images", str(BDD), "--model", str(TWINLITENET), "--labels", str(labels_file),
                     "--headless", "--save", f"{out}/", "--summary-json", str(tmp_path / "s.json"),
                     "--backend", "onnxruntime")  # auto's first timing of a new model takes ~15 s
    assert result.returncode == 0, result.stderr
    inputs = sorted(p.stem for p in BDD.glob("*.jpg"))
    assert sorted(p.stem for p in out.glob("*.png")) == inputs
    first = cv2.imread(str(out / f"{inputs[0]}.png"))
    assert first.shape[:2] == cv2.imread(str(next(BDD.glob("*.jpg")))).shape[:2]


def test_labels_naming_an_output_the_model_lacks(tmp_path):
    wrong = {**LABELS, "outputs": {"drivable": LABELS["outputs"]["drivable"],
                                   "lane_lines": LABELS["outputs"]["lanes"]}}
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(wrong))
    result = run_app("--images", str(BDD), "--model", str(TWINLITENET), "--labels", str(path),
                     "--headless")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "'lane_lines'" in errors[0] and "'lanes'" in errors[0]


@pytest.mark.parametrize("section,fragment", [({"color": "yuv"}, "rgb"), ({"resize": "crop"}, "letterbox"),
                                              ({"scale": 0}, "scale"), ({"gamma": 2}, "unknown")])
def test_bad_input_conventions_are_refused(tmp_path, section, fragment):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**LABELS, "input": section}))
    with pytest.raises(engines.EngineError, match=fragment):
        engines.load(TWINLITENET, "onnxruntime", path)
