"""Colour maps of the side-by-side figures."""

from __future__ import annotations

import numpy as np

from jetvit.tasks.datasets import IGNORE
from jetvit.tasks.visualize import colour_depth, colour_mask, palette, robust_range


def test_palette_is_distinct_and_ignore_is_black() -> None:
    colours = palette(150)
    assert len({tuple(c) for c in colours[:150]}) == 150
    rgb = colour_mask(np.array([[0, 1], [IGNORE, 7]]), 3)  # 7 is not a class of a 3-class task either
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[1] == 0).all() and (rgb[0, 0] != rgb[0, 1]).any()


def test_colour_depth_marks_only_invalid_pixels_black() -> None:
    d = np.array([[0.0, 1.0], [np.nan, 2.0]])
    lo, hi = robust_range(d)
    assert 1.0 <= lo < hi <= 2.0
    pred = colour_depth(d, vmin=lo, vmax=hi)
    gt = colour_depth(d, vmin=lo, vmax=hi, zero_is_invalid=True)
    assert (pred[1, 0] == 0).all() and (gt[1, 0] == 0).all()  # NaN: black in both
    assert pred[0, 0].any() and not gt[0, 0].any()  # 0: a value in a prediction, no measurement in ground truth
    assert (pred[0, 1] != pred[1, 1]).any()
