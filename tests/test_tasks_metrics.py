"""Segmentation metrics against scikit-learn and hand-worked numbers; depth and DA2K metrics by hand."""

from __future__ import annotations

import math

import pytest
import torch

from jetvit.tasks.metrics import (
    DA2KAccuracy,
    DepthMetrics,
    SegMetrics,
    align_depth,
    da2k_pair_correct,
    fit_scale_shift,
)

# ---------------------------------------------------------------------------------------------------- segmentation


def test_seg_confusion_matches_sklearn_streamed_with_ignore() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 5, (3, 17, 23), generator=g)
    m = SegMetrics(5, ignore_index=255)
    m.update(pred[:2], target[:2])
    m.update(pred[2], target[2])
    keep = target != 255
    ref = sklearn_metrics.confusion_matrix(target[keep].numpy(), pred[keep].numpy(), labels=list(range(5)))
    assert m.confusion.tolist() == ref.tolist()
    r = m.compute()
    assert r["num_pixels"] == int(keep.sum())
    jaccard = sklearn_metrics.jaccard_score(target[keep].numpy(), pred[keep].numpy(), average=None, labels=range(5))
    assert r["per_class_iou"] == pytest.approx(jaccard.tolist())
    assert r["miou"] == pytest.approx(jaccard.mean())
    assert r["pixel_acc"] == pytest.approx(sklearn_metrics.accuracy_score(target[keep].numpy(), pred[keep].numpy()))


def test_seg_hand_worked_with_ignore_and_empty_class() -> None:
    m = SegMetrics(3, ignore_index=255)
    # The ignored pixel predicts class 2: it must not create a class-2 false positive.
    m.update(torch.tensor([[0, 1, 1, 1, 2]]), torch.tensor([[0, 0, 1, 1, 255]]))
    r = m.compute()
    assert r["per_class_iou"][0] == pytest.approx(1 / 2)  # TP 1, FN 1
    assert r["per_class_iou"][1] == pytest.approx(2 / 3)  # TP 2, FP 1
    assert math.isnan(r["per_class_iou"][2])  # zero union: reported NaN, left out of the mean
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["pixel_acc"] == pytest.approx(3 / 4)


def test_seg_class_only_in_prediction_counts_as_zero() -> None:
    m = SegMetrics(3)
    m.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    r = m.compute()
    assert r["per_class_iou"][2] == 0.0 and math.isnan(r["per_class_iou"][1])
    assert r["miou"] == pytest.approx((0.5 + 0.0) / 2)


def test_seg_accepts_logits_and_rejects_bad_labels() -> None:
    m = SegMetrics(2)
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])  # (B=1, C=2, H=1, W=2) -> classes [0, 1]
    m.update(logits, torch.tensor([[[0, 0]]]))
    assert m.confusion.tolist() == [[1, 1], [0, 0]]
    with pytest.raises(ValueError, match=r"\[7\].*outside \[0, 2\)"):
        m.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------------- depth


def test_fit_scale_shift_recovers_affine_map() -> None:
    x = torch.tensor([0.5, 1.0, 2.0, 7.0])
    s, t = fit_scale_shift(x, 2.5 * x - 0.75)
    assert (s, t) == pytest.approx((2.5, -0.75))
    assert fit_scale_shift(torch.ones(4), torch.tensor([1.0, 2.0, 3.0, 6.0])) == pytest.approx((0.0, 3.0))


def test_metric_depth_hand_worked_with_mask() -> None:
    pred = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    gt = torch.tensor([[1.0, 1.0, 4.0, 0.0]])  # last pixel has no measurement
    m = DepthMetrics(align="none")
    m.update(pred, gt)
    r = m.compute()
    assert r["abs_rel"] == pytest.approx((0 + 1 + 0) / 3)
    assert r["delta1"] == pytest.approx(2 / 3)  # ratios 1, 2, 1
    m = DepthMetrics(align="none")
    m.update(pred, gt, mask=torch.tensor([[True, False, True, True]]))
    assert m.compute()["abs_rel"] == pytest.approx(0.0)


def test_depth_metrics_average_per_image() -> None:
    m = DepthMetrics(align="none")
    gt = torch.ones(2, 2, 2)
    pred = torch.stack([torch.ones(2, 2), torch.tensor([[2.0, 1.0], [1.0, 1.0]])])
    m.update(pred, gt)
    r = m.compute()
    assert r["num_images"] == 2
    assert r["abs_rel"] == pytest.approx((0.0 + 0.25) / 2)
    assert r["delta1"] == pytest.approx((1.0 + 0.75) / 2)


def test_relative_disparity_alignment_is_exact_for_affine_disparity() -> None:
    gt = torch.tensor([[1.0, 2.0, 4.0], [8.0, 3.0, 0.0]])
    pred = 0.3 / gt.clamp(min=1e-3) + 0.05  # disparity up to scale and shift; the 0 pixel is invalid anyway
    for align, expect_exact in (("disparity", True), ("depth", False)):
        m = DepthMetrics(align=align)
        m.update(pred, gt)
        r = m.compute()
        if expect_exact:
            assert r["abs_rel"] == pytest.approx(0.0, abs=1e-6) and r["delta1"] == 1.0  # float32 inputs
        else:
            assert r["abs_rel"] > 0.05  # fitting disparity as if it were depth is wrong


def test_depth_alignment_is_exact_for_affine_depth_and_clips_to_gt_range() -> None:
    gt = torch.tensor([2.0, 3.0, 5.0])
    valid = torch.ones(3, dtype=torch.bool)
    aligned = align_depth(4.0 * gt - 1.0, gt, valid, align="depth")
    torch.testing.assert_close(aligned, gt.double())
    # A disparity fit whose line crosses zero would give negative or infinite depths: clipped to the gt range.
    aligned = align_depth(torch.tensor([1.0, 0.0, -5.0]), gt, valid, align="disparity")
    assert aligned.min() >= 2.0 and aligned.max() <= 5.0
    with pytest.raises(ValueError, match="align must be one of"):
        DepthMetrics(align="inverse")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- DA2K


def test_da2k_pairs_for_depth_and_disparity() -> None:
    pred = torch.tensor([[1.0, 5.0], [3.0, 3.0]])
    pairs = [
        {"point1": [0, 0], "point2": [0, 1], "closer_point": "point2"},  # 5 > 1
        {"point1": [1, 0], "point2": [0, 0], "closer_point": "point1"},  # 3 > 1
        {"point1": [1, 0], "point2": [1, 1], "closer_point": "point1"},  # tie: wrong either way
    ]
    assert da2k_pair_correct(pred, pairs, larger_is_closer=True) == [True, True, False]
    assert da2k_pair_correct(pred, pairs, larger_is_closer=False) == [False, False, False]
    acc = DA2KAccuracy(larger_is_closer=True)
    acc.update(pred, pairs)
    acc.update(-pred, pairs[:1])
    assert acc.compute() == {"accuracy": pytest.approx(2 / 4), "correct": 2, "num_pairs": 4}


def test_da2k_rejects_bad_points() -> None:
    with pytest.raises(ValueError, match=r"point2 \[2, 0\].*outside the 2x2"):
        da2k_pair_correct(
            torch.zeros(2, 2), [{"point1": [0, 0], "point2": [2, 0], "closer_point": "point1"}], larger_is_closer=True
        )
    with pytest.raises(ValueError, match="closer_point"):
        da2k_pair_correct(
            torch.zeros(2, 2), [{"point1": [0, 0], "point2": [1, 0], "closer_point": "a"}], larger_is_closer=True
        )
