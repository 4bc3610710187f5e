"""Render functions on small hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from engines.labels import ClassInfo
from realtime.render import Palette, colorize, overlay, parse_class_selection, upsample_labels

CLASSES = [ClassInfo(0, "sky", (10, 20, 30), "background"),
           ClassInfo(1, "road", (200, 0, 0), "drivable"),
           ClassInfo(2, "car", (0, 0, 250), "object")]


def test_upsample_is_nearest_neighbour():
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    full = upsample_labels(labels, 4, 4)
    assert full.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]]


def test_colors_land_where_the_labels_are():
    palette = Palette.build(CLASSES, [0, 1, 2])
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    colour = colorize(upsample_labels(labels, 4, 4), palette)
    assert colour[0, 0].tolist() == [30, 20, 10]  # RGB table, BGR image
    assert colour[0, 3].tolist() == [0, 0, 200]
    assert colour[3, 0].tolist() == [250, 0, 0]


def test_full_alpha_paints_shown_classes_and_leaves_the_rest():
    frame = np.full((4, 4, 3), 77, np.uint8)
    palette = Palette.build(CLASSES, [1])  # only the road is shown
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    out = overlay(frame, labels, palette, alpha=1.0, outline=False)
    assert (out[:, 2:] == [0, 0, 200]).all()  # road: pure class colour
    assert (out[:, :2] == 77).all()  # sky and car: untouched
    assert (frame == 77).all()  # the input frame is not modified


def test_in_place_draws_the_same_image_into_the_frame():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (10, 10), dtype=np.uint8)
    palette = Palette.build(CLASSES, [1, 2])
    expected = overlay(frame, labels, palette, alpha=0.5, outline=True)
    drawn = overlay(frame, labels, palette, alpha=0.5, outline=True, in_place=True)
    assert drawn is frame and np.array_equal(frame, expected)


def test_half_alpha_blends():
    frame = np.full((2, 2, 3), 100, np.uint8)
    palette = Palette.build(CLASSES, [2])
    out = overlay(frame, np.full((1, 1), 2, np.uint8), palette, alpha=0.5, outline=False)
    assert out[0, 0].tolist() == [175, 50, 50]


def test_alpha_zero_leaves_the_frame_untouched():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    palette = Palette.build(CLASSES, [0, 1, 2])
    labels = rng.integers(0, 3, (3, 4), dtype=np.uint8)
    assert np.array_equal(overlay(frame, labels, palette, alpha=0.0, outline=False), frame)


def test_outline_is_drawn_around_the_drivable_region_only():
    frame = np.zeros((40, 40, 3), np.uint8)
    labels = np.zeros((10, 10), np.uint8)
    labels[5:, 2:8] = 1
    palette = Palette.build(CLASSES, [1])
    out = overlay(frame, labels, palette, alpha=0.0, outline=True)
    changed = out.any(axis=2)
    assert changed.any()
    assert not changed[:15].any()  # nothing far above the region's top edge (row 20)


def test_class_selection():
    assert parse_class_selection("drivable,objects", CLASSES) == [1, 2]
    assert parse_class_selection("all", CLASSES) == [0, 1, 2]
    assert parse_class_selection("car", CLASSES) == [2]
    with pytest.raises(ValueError, match="unknown entry"):
        parse_class_selection("trucks", CLASSES)


def test_overlaid_classes_are_clearly_apart_and_legend_matches():
    from engines.labels import ROADSEG_CLASSES
    from realtime.render import distinct, make_legend

    for selection in ("drivable,objects", "all"):
        shown = parse_class_selection(selection, ROADSEG_CLASSES)
        palette = Palette.build(ROADSEG_CLASSES, shown)
        colours = [palette.rgb[i] for i in shown]
        pairs = [(a, b) for i, a in enumerate(colours) for b in colours[i + 1:]]
        assert all(distinct(a, b) for a, b in pairs), selection
        objects = [palette.rgb[c.id] for c in ROADSEG_CLASSES if c.group == "object" and c.id in shown]
        assert all(distinct(palette.rgb[3], other, by_hue=True) for other in objects)
        assert palette.rgb[3] == (128, 64, 128)  # the road keeps its CamVid colour
        assert distinct(palette.rgb[3], palette.rgb[8])  # road and car: other hues
        # The legend of a 480x360 frame stays small, and shows the overlay's colours.
        legend = make_legend(ROADSEG_CLASSES, palette, shown, (360, 480))
        assert legend.shape[1] <= 480 / 5 + 1 and legend.shape[0] <= 360 / 2 + 1
        assert legend.size / (360 * 480 * 3) < 0.1


def test_dark_swatches_are_framed():
    from realtime.render import make_legend

    dark = [ClassInfo(0, "shadow", (0, 0, 0), "object")]
    legend = make_legend(dark, Palette.build(dark, [0]), [0], (720, 1280))
    assert (legend == 200).all(axis=2).any()  # the light frame around the black swatch


def test_overlay_equals_colouring_at_full_resolution():
    import cv2

    from engines.labels import ROADSEG_CLASSES
    from realtime.render import colorize

    palette = Palette.build(ROADSEG_CLASSES, parse_class_selection("all", ROADSEG_CLASSES))
    rng = np.random.default_rng(1)
    for frame_shape, label_shape in (((540, 960), (360, 480)), ((361, 641), (360, 480)), ((90, 160), (90, 160))):
        frame = rng.integers(0, 255, (*frame_shape, 3), dtype=np.uint8)
        labels = rng.integers(0, 12, label_shape, dtype=np.uint8)
        full = upsample_labels(labels, *frame_shape)
        expected = frame.copy()
        cv2.copyTo(cv2.addWeighted(frame, 0.5, colorize(full, palette), 0.5, 0), cv2.LUT(full, palette.shown), expected)
        assert np.array_equal(overlay(frame, labels, palette, outline=False), expected)
