"""Session fixtures built from the helpers (real models and videos, made once)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import classifier_model, contract_model, logits_model, write_video


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models and videos shared by the tests (built once per session)."""
    root = tmp_path_factory.mktemp("assets")
    labels = root / "labels4.json"
    labels.write_text(json.dumps({"classes": [
        {"id": 0, "name": "road", "color": [128, 64, 128], "group": "drivable"},
        {"id": 1, "name": "car", "color": [0, 0, 142], "group": "object"},
        {"id": 2, "name": "person", "color": [220, 20, 60], "group": "object"},
        {"id": 3, "name": "other", "color": [0, 0, 0], "group": "background"}],
        "input": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    return {
        "tiny": contract_model(root / "tiny.onnx"),
        "logits": logits_model(root / "user_logits.onnx"),
        "classifier": classifier_model(root / "classifier.onnx"),
        "labels4": labels,
        "video": write_video(root / "drive.mp4", 40),
    }


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 2 MB tmpfs where the machine lets us mount one, else None."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        yield None
        return
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)
