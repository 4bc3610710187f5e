"""CamVid reader (numpy + OpenCV only, so calibration and evaluation need no PyTorch)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class DatasetError(RuntimeError):
    """The dataset folder is missing or incomplete; the message says where it was looked for."""


class CamVid:
    """One split of ../shared/data/camvid: <split>/*.png images and <split>annot/*.png labels."""

    def __init__(self, root: Path, split: str):
        self.root = Path(root)
        self.split = split
        image_dir, label_dir = self.root / split, self.root / f"{split}annot"
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DatasetError(f"CamVid split {split!r} not found: expected {image_dir} and "
                               f"{label_dir} (pass --data pointing at the camvid folder)")
        self.image_paths = sorted(image_dir.glob("*.png"))
        self.label_paths = [label_dir / p.name for p in self.image_paths]
        missing = [p for p in self.label_paths if not p.exists()]
        if not self.image_paths or missing:
            raise DatasetError(f"CamVid split {split!r} in {self.root} is empty or lacks labels "
                               f"({len(missing)} missing)")

    def __len__(self) -> int:
        return len(self.image_paths)

    def sequences(self) -> list[str]:
        """The drive each frame comes from (file names are <drive>_<frame>.png)."""
        return [p.name.split("_")[0] for p in self.image_paths]

    def load_images(self, limit: int | None = None, indices: list[int] | None = None) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] (OpenCV order, the model contract's order)."""
        paths = self._select(self.image_paths, limit, indices)
        return np.stack([cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths])

    def load_labels(self, limit: int | None = None, indices: list[int] | None = None) -> np.ndarray:
        """uint8 class ids [N, H, W]; 11 is void."""
        paths = self._select(self.label_paths, limit, indices)
        return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths])

    @staticmethod
    def _select(paths: list[Path], limit: int | None, indices: list[int] | None) -> list[Path]:
        return [paths[i] for i in indices][:limit] if indices is not None else paths[:limit]
