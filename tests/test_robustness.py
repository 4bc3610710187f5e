"""Robustness tooling on real CamVid frames: fixed corruptions, the training augmentation,
the drive-disjoint split, ego-class scoring, safe checkpoint loading, and the BDD reference."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="robustness tests need the [train] extra (torch)")

from helpers import REPO, camvid_or_skip, run_app

from engines.labels import CAMVID_VOID, EGO_CLASS, TRAIN_IGNORE
from engines.metrics import ConfusionMatrix
from training import reference
from training.augment import (RealHoods, RobustAugment, paint_dashboard, paint_hood,
                              recolour_classes, recolour_road)
from engines.camvid import CamVid
from training.corruptions import CORRUPTIONS, corrupt_frames
from training.data import load_splits, void_to_train_labels

TEACHER = REPO.parent / "shared" / "teachers" / "twinlitenet" / "twinlitenet.onnx"
BDD = REPO.parent / "shared" / "data" / "bdd-samples"


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_and_change_the_frame(name):
    frames = CamVid(camvid_or_skip(), "val").load_images(limit=2)
    first, again = corrupt_frames(frames, name, 2, seed=3), corrupt_frames(frames, name, 2, seed=3)
    assert first.shape == frames.shape and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - frames).mean() > 2


def test_night_is_darker_with_severity():
    frames = CamVid(camvid_or_skip(), "val").load_images(limit=1)
    means = [corrupt_frames(frames, "night", s).mean() for s in (1, 2, 3)]
    assert means[0] > means[1] > means[2] and means[0] < frames.mean()


def test_holdout_drive_leaves_training():
    camvid = camvid_or_skip()
    train, _ = load_splits(camvid, ["train"], exclude={"0006R0"})
    held, _ = load_splits(camvid, ["train"], sequences={"0006R0"})
    assert len(train) + len(held) == len(CamVid(camvid, "train")) and len(held) == 101


def test_robust_augmentation_keeps_labels_and_hood_is_labelled_ego():
    images, labels = load_splits(camvid_or_skip(), ["train"], limit=4)
    rgb = images.permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(0)
    out = RobustAugment(1.0)(rgb, generator)
    assert out.shape == rgb.shape and 0 <= out.min() and out.max() <= 1
    hooded = labels.long().clone()
    paint_hood(out, hooded, 11, probability=1.0, generator=generator)
    assert (hooded[:, -1] == 11).all()  # the bottom row is hood in every frame
    assert (hooded[:, 0] == labels[:, 0].long()).all()  # the top row is untouched


def test_dashboard_is_a_dark_ego_band_and_its_windscreen_haze_keeps_the_road():
    images, labels = load_splits(camvid_or_skip(), ["train"], limit=8, sequences={"0016E5"})
    void_to_train_labels(labels, CAMVID_VOID, EGO_CLASS.id, TRAIN_IGNORE)
    rgb = images.permute(0, 3, 1, 2).flip(1).float() / 255
    before_rgb, before_labels = rgb.clone(), labels.long()
    painted = before_labels.clone()
    paint_dashboard(rgb, painted, EGO_CLASS.id, probability=1.0,
                    generator=torch.Generator().manual_seed(0))
    ego = painted == EGO_CLASS.id
    height = ego.shape[1]
    # A band at the bottom of every frame, never above the tallest dashboard plus its tilt.
    assert (ego[:, -1]).all()
    assert not ego[:, :int(height * (1 - 0.32 - 0.04 - 0.1))].any()
    # Dark: the band is far darker than the scene it covers.
    assert rgb.permute(0, 2, 3, 1)[ego].mean() < 0.5 * before_rgb.permute(0, 2, 3, 1)[ego].mean()
    # Labels change only under the band, though the haze brightens the scene above it.
    assert torch.equal(painted[~ego], before_labels[~ego])
    above = ~ego & ((rgb - before_rgb).abs().amax(1) > 0.02)
    assert above.any()  # some frames got the windscreen reflection
    assert (rgb[:, :, :int(height * 0.4)] == before_rgb[:, :, :int(height * 0.4)]).all()


def test_recoloured_road_keeps_its_labels_and_only_the_road_and_its_edge_change():
    images, labels = load_splits(camvid_or_skip(), ["train"], limit=8, sequences={"0016E5"})
    rgb = images.permute(0, 3, 1, 2).flip(1).float() / 255
    before_rgb, before_labels = rgb.clone(), labels.clone()
    road = labels == 3
    generator = torch.Generator().manual_seed(0)
    recolour_road(rgb, labels, 3, probability=0.0, generator=generator)
    assert torch.equal(rgb, before_rgb) and torch.equal(generator.get_state(),
                                                        torch.Generator().manual_seed(0).get_state())
    recolour_road(rgb, labels, 3, probability=1.0, generator=generator)
    assert torch.equal(labels, before_labels)
    changed = (rgb - before_rgb).abs().amax(1) > 1e-6
    # Every frame's road took another surface: paler on most, darker on the rest.
    lighter = [(rgb[i][:, road[i]].mean() > before_rgb[i][:, road[i]].mean()).item()
               for i in range(len(rgb))]
    assert changed[road].float().mean() > 0.95
    assert len(lighter) // 2 <= sum(lighter) < len(lighter), lighter
    # Off the road nothing moves, but for the softened seam within 2 pixels of it.
    near_road = torch.nn.functional.max_pool2d(road[:, None].float(), 5, 1, 2)[:, 0].bool()
    assert not changed[~near_road].any()


def test_recoloured_classes_each_take_one_gain_and_keep_their_labels():
    images, labels = load_splits(camvid_or_skip(), ["train"], limit=4, sequences={"0016E5"})
    rgb = images.permute(0, 3, 1, 2).flip(1).float() / 255
    before_rgb, before_labels = rgb.clone(), labels.clone()
    generator = torch.Generator().manual_seed(0)
    recolour_classes(rgb, labels, list(range(11)), probability=0.0, generator=generator)
    assert torch.equal(rgb, before_rgb) and torch.equal(generator.get_state(),
                                                        torch.Generator().manual_seed(0).get_state())
    recolour_classes(rgb, labels, list(range(11)), probability=1.0, generator=generator)
    assert torch.equal(labels, before_labels)
    # Inside a region (2 pixels from its edge and the frame's) every unclipped pixel has the
    # same gain per channel; some regions were relit, others kept as they were.
    relit = kept = 0
    for i in range(len(rgb)):
        for class_id in [c for c in labels[i].unique().tolist() if c < 11]:  # void is not relit
            region = (labels[i] == class_id).float()[None, None]
            core = (-torch.nn.functional.max_pool2d(-region, 5, 1, 2))[0, 0] > 0.5  # eroded
            core[:2], core[-2:], core[:, :2], core[:, -2:] = False, False, False, False  # fades out
            pixels = core & (before_rgb[i].amin(0) > 0.05) & (rgb[i].amax(0) < 0.99)
            if pixels.sum() < 50:
                continue
            ratio = rgb[i][:, pixels] / before_rgb[i][:, pixels]
            assert (ratio - ratio.median(1, keepdim=True).values).abs().amax() < 0.05
            if (ratio.median(1).values - 1).abs().amax() > 0.02:
                relit += 1
            else:
                kept += 1
    assert relit >= 2 and kept >= 2


def test_real_hoods_are_cut_from_0001TP_and_pasted_as_ego_at_the_bottom():
    camvid = camvid_or_skip()
    # The cuts: one per 0001TP frame (whose hood is labelled), none from a drive without one.
    images, labels = load_splits(camvid, ["train"], limit=4, sequences={"0001TP"})
    void_to_train_labels(labels, CAMVID_VOID, EGO_CLASS.id, TRAIN_IGNORE)
    hoods = RealHoods(images, labels, EGO_CLASS.id, probability=0.3)
    assert len(hoods) == 4 and 0 < hoods.expected_share() < 0.3 * RealHoods.HEIGHT_RANGE[1]
    other_images, other_labels = load_splits(camvid, ["train"], limit=4, sequences={"0016E5"})
    void_to_train_labels(other_labels, CAMVID_VOID, EGO_CLASS.id, TRAIN_IGNORE)
    assert len(RealHoods(other_images, other_labels, EGO_CLASS.id, 0.3)) == 0
    # Pasted into frames of another drive: ego pixels only in the bottom 30 %, the image
    # changed only under them, everything else as it was.
    rgb = other_images.permute(0, 3, 1, 2).flip(1).float() / 255
    before_rgb, before_labels = rgb.clone(), other_labels.long()
    pasted = before_labels.clone()
    hoods.probability = 1.0
    hoods.paste(rgb, pasted, generator=torch.Generator().manual_seed(0))
    ego = pasted == EGO_CLASS.id
    height = ego.shape[1]
    assert ego.flatten(1).any(1).all()
    assert not ego[:, :int(height * (1 - RealHoods.HEIGHT_RANGE[1])) - 1].any()
    assert torch.equal(pasted[~ego], before_labels[~ego])
    changed = (rgb != before_rgb).any(1)
    assert not (changed & ~ego).any()


def test_extra_class_predictions_count_as_misses_not_false_positives():
    truth = np.array([3, 3, 0, 0])
    matrix = ConfusionMatrix(4)
    matrix.update(np.array([3, 11, 0, 0]), truth)  # 11: the ego class, outside CamVid's table
    assert matrix.iou().tolist() == pytest.approx([1.0, np.nan, np.nan, 0.5], nan_ok=True)
    summary = matrix.summary(["a", "b", "c", "road"], drivable_ids=[3])
    assert summary["drivable_iou"] == pytest.approx(0.5) and summary["pixel_accuracy"] == 0.75


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_that_carries_code_is_refused_with_one_line(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((48, 64, 3), np.uint8))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"model": _RunsCode()}, handle)
    result = run_app("--model", str(evil), "--images", str(tmp_path / "*.png"), "--headless",
                     timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pwned" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "evil.pt" in errors[0] and "Traceback" not in result.stderr


@pytest.mark.skipif(not TEACHER.is_file() or not BDD.is_dir(),
                    reason="needs ../shared/teachers/twinlitenet and ../shared/data/bdd-samples")
def test_reference_comparison_on_bdd_samples(tmp_path, capsys):
    args = reference.parse_args(["--model", "roadseg-360x270", "--frames", str(BDD), "--teacher",
                                 str(TEACHER), "--sheet", str(tmp_path / "s.png"),
                                 "--json", str(tmp_path / "r.json")])
    assert reference.main(args) == 0
    frames = json.loads((tmp_path / "r.json").read_text())["frames"]
    assert len(frames) == 7
    assert all(0 <= f["road_recall"] <= 1 and f["reference_drivable"] > 0.02 for f in frames.values())
    # IoU never exceeds recall (the union holds the whole reference area) and is positive here.
    assert all(0 < f["drivable_iou"] <= f["road_recall"] for f in frames.values())
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "road recall: lowest" in capsys.readouterr().out
