"""Segmentation, depth and classification metrics, accumulated over a stream of batches.

Conventions (stated once, used everywhere in jetvit):

- Segmentation: one confusion matrix over all pixels of the split (rows = ground truth, columns = prediction, as
  scikit-learn). Pixels whose label is `ignore_index` are skipped. IoU_c = TP / (TP + FP + FN); a class with zero
  union (absent from both ground truth and prediction over the whole split) has IoU NaN and is left out of the mean,
  so mIoU averages over the classes present in the ground truth or the prediction.
- Depth: metrics are computed per image and averaged over images. AbsRel = mean |d - d*| / d*; delta1 = fraction of
  pixels with max(d / d*, d* / d) < 1.25; only pixels with valid ground truth (finite, > 0, inside the optional mask
  and depth range) count. Relative predictions are first aligned to the ground truth by least-squares scale and
  shift, per image:
    align="disparity": the prediction is disparity-like (larger = closer, as relative Depth-Anything outputs); fit
      s * pred + t to 1 / d*, then d = 1 / (s * pred + t). This is how DAv2 evaluates its relative models.
    align="depth": the prediction is depth-like; fit s * pred + t to d*.
    align="none": metric predictions, used as they are.
  After a fit the aligned depth is clipped to the image's valid ground-truth range, so a fitted disparity near or
  below zero cannot produce infinite or negative depths.
- DA2K: a pair is correct when the prediction orders its two points as the annotation does; ties count as wrong.
- Classification: top-k accuracy over images. A sample is correct at k when fewer than k other classes score at least
  as high as its true class: ties count against it (a constant prediction is never top-1 correct when there are two
  or more classes), so the result does not depend on how a sort orders equal scores. With k >= the number of classes
  every sample is correct. A NaN score counts as at least as high as any other, so NaN logits never help.
- Detection: COCO's box AP, computed by pycocotools' own `COCOeval` (the reference implementation every COCO number
  is reported with): per category, precision interpolated at 101 recall points, averaged over the IoU thresholds
  0.50:0.05:0.95 ("map"), or at 0.50 ("ap50") and 0.75 ("ap75"); at most 100 detections per image, kept by score; a
  detection matches the unmatched ground-truth box of its category with the highest IoU >= the threshold (crowd
  boxes are ignored, not missed); categories without ground truth in the evaluated images are left out of the mean,
  and a value COCO cannot define (no ground truth in an area range) is NaN. Boxes are [x, y, w, h] in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from jetvit.tasks.config import MAX_DEPTH, MIN_DEPTH

Align = Literal["none", "depth", "disparity"]
ALIGN_MODES = ("none", "depth", "disparity")


# --------------------------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------------------------


class SegMetrics:
    """Streaming confusion matrix: `update(pred, target)` per batch, `compute()` at the end."""

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # (C_true, C_pred)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: class indices (..., H, W) (or logits (B, C, H, W)); target: labels of the same shape as the indices."""
        if pred.dim() == target.dim() + 1 and pred.shape[-3] == self.num_classes:
            pred = pred.argmax(dim=-3)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        bad = (target < 0) | (target >= c)
        if bad.any():
            values = sorted(set(target[bad].unique().tolist()))[:10]
            raise ValueError(
                f"target labels {values} are outside [0, {c}) and not the ignore label {self.ignore_index}"
            )
        if ((pred < 0) | (pred >= c)).any():
            raise ValueError(f"predicted classes outside [0, {c})")
        self.confusion += torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)

    def compute(self) -> dict[str, Any]:
        """-> {"miou", "pixel_acc", "per_class_iou" (list, NaN for zero union), "num_pixels"}; values in [0, 1]."""
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        total = cm.sum()
        present = union > 0
        return {
            "miou": iou[present].mean().item() if present.any() else math.nan,
            "pixel_acc": (tp.sum() / total).item() if total > 0 else math.nan,
            "per_class_iou": iou.tolist(),
            "num_pixels": int(total.item()),
        }


# --------------------------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------------------------


def fit_scale_shift(pred: Tensor, target: Tensor) -> tuple[float, float]:
    """Least-squares (s, t) minimising sum (s * pred + t - target)^2 over 1-D tensors of equal length."""
    pred, target = pred.double(), target.double()
    n = pred.numel()
    if n < 2:
        raise ValueError(f"need at least 2 valid pixels to fit scale and shift, got {n}")
    a00, a01 = (pred * pred).sum(), pred.sum()
    b0, b1 = (pred * target).sum(), target.sum()
    det = a00 * n - a01 * a01
    if det.abs() <= 1e-12 * (a00 * n).clamp(min=1e-300):
        # A constant prediction: only the shift is determined.
        return 0.0, float(b1 / n)
    s = (n * b0 - a01 * b1) / det
    t = (a00 * b1 - a01 * b0) / det
    return float(s), float(t)


def valid_depth_mask(
    target: Tensor, mask: Tensor | None = None, *, min_depth: float = 0.0, max_depth: float = math.inf
) -> Tensor:
    """Pixels of `target` (..., H, W) with a usable ground truth: finite, > min_depth (and > 0), <= max_depth."""
    valid = torch.isfinite(target) & (target > max(min_depth, 0.0)) & (target <= max_depth)
    if mask is not None:
        if mask.shape != target.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match depth shape {tuple(target.shape)}")
        valid &= mask.bool()
    return valid


def align_depth(pred: Tensor, target: Tensor, valid: Tensor, *, align: Align) -> Tensor:
    """One image: pred (H, W) -> depth (H, W) aligned to target (H, W) on `valid` (H, W); see the module doc."""
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
    pred = pred.double()
    if align == "none":
        return pred
    gt = target[valid].double()
    if align == "depth":
        s, t = fit_scale_shift(pred[valid], gt)
        depth = s * pred + t
    else:
        s, t = fit_scale_shift(pred[valid], 1.0 / gt)
        disparity = (s * pred + t).clamp(min=1.0 / gt.max().item())
        depth = 1.0 / disparity
    return depth.clamp(min=gt.min().item(), max=gt.max().item())


def depth_errors(depth: Tensor, target: Tensor, valid: Tensor) -> dict[str, float]:
    """AbsRel and delta1 of depth (H, W) against target (H, W) over `valid` (H, W)."""
    d, g = depth[valid].double(), target[valid].double()
    ratio = torch.maximum(d / g, g / d.clamp(min=1e-12))
    return {"abs_rel": ((d - g).abs() / g).mean().item(), "delta1": (ratio < 1.25).double().mean().item()}


class DepthMetrics:
    """Streaming per-image depth metrics: `update(pred, target, mask)` per batch, `compute()` -> means over images.

    align: "disparity" (relative, disparity-like predictions: DAv2), "depth" (relative, depth-like) or "none"
    (metric). min_depth / max_depth bound the ground truth that counts (e.g. NYUv2 1e-3..10, KITTI 1e-3..80).
    """

    def __init__(self, *, align: Align, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH) -> None:
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        if not max_depth > min_depth:
            raise ValueError(f"max_depth ({max_depth}) must exceed min_depth ({min_depth})")
        self.align, self.min_depth, self.max_depth = align, min_depth, max_depth
        self.sums = {"abs_rel": 0.0, "delta1": 0.0}
        self.num_images = 0
        self.skipped = 0  # images with fewer than 2 valid pixels

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred, target, mask: (B, H, W) or (H, W); target in metres (0 or non-finite = no measurement)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        pred, target = pred.detach().float().cpu(), target.detach().float().cpu()
        if mask is not None:
            mask = mask.cpu()
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
            mask = None if mask is None else mask[None]
        for i in range(pred.shape[0]):
            valid = valid_depth_mask(
                target[i], None if mask is None else mask[i], min_depth=self.min_depth, max_depth=self.max_depth
            )
            if valid.sum() < 2:
                self.skipped += 1
                continue
            depth = align_depth(pred[i], target[i], valid, align=self.align)
            for k, v in depth_errors(depth, target[i], valid).items():
                self.sums[k] += v
            self.num_images += 1

    def compute(self) -> dict[str, Any]:
        n = self.num_images
        out: dict[str, Any] = {k: (v / n if n else math.nan) for k, v in self.sums.items()}
        out.update(num_images=n, skipped_images=self.skipped, align=self.align)
        return out


# --------------------------------------------------------------------------------------------------------------------
# DA2K relative-depth pairs
# --------------------------------------------------------------------------------------------------------------------


def da2k_pair_correct(pred: Tensor, pairs: Sequence[dict[str, Any]], *, larger_is_closer: bool) -> list[bool]:
    """Per pair: does the prediction (H, W) order the two points as annotated?

    pairs: DA2K records {"point1": [y, x], "point2": [y, x], "closer_point": "point1" | "point2"}, in the pixel
    coordinates of `pred` (resize the prediction to the image first). larger_is_closer: True for disparity-like
    predictions (relative DAv2), False for depth.
    """
    if pred.dim() != 2:
        raise ValueError(f"DA2K expects one prediction map (H, W), got shape {tuple(pred.shape)}")
    h, w = pred.shape
    out = []
    for pair in pairs:
        closer = pair.get("closer_point")
        if closer not in ("point1", "point2"):
            raise ValueError(f"DA2K closer_point must be 'point1' or 'point2', got {closer!r}")
        values = []
        for key in ("point1", "point2"):
            y, x = (int(round(float(c))) for c in pair[key])
            if not (0 <= y < h and 0 <= x < w):
                raise ValueError(f"DA2K {key} {pair[key]} (y, x) lies outside the {h}x{w} prediction")
            values.append(float(pred[y, x]))
        v1, v2 = values
        first_closer = v1 > v2 if larger_is_closer else v1 < v2
        second_closer = v2 > v1 if larger_is_closer else v2 < v1
        out.append(first_closer if closer == "point1" else second_closer)
    return out


class DA2KAccuracy:
    """Streaming DA2K pair-ordering accuracy: `update(pred (H, W), pairs)` per image, `compute()`."""

    def __init__(self, *, larger_is_closer: bool) -> None:
        self.larger_is_closer = larger_is_closer
        self.correct = 0
        self.total = 0

    def update(self, pred: Tensor, pairs: Sequence[dict[str, Any]]) -> None:
        hits = da2k_pair_correct(pred.detach().float().cpu(), pairs, larger_is_closer=self.larger_is_closer)
        self.correct += sum(hits)
        self.total += len(hits)

    def compute(self) -> dict[str, Any]:
        acc = self.correct / self.total if self.total else math.nan
        return {"accuracy": acc, "correct": self.correct, "num_pairs": self.total}


# --------------------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------------------


def topk_correct(logits: Tensor, target: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """logits (B, C), target (B,) -> per k a bool (B,): the true class is in the top k, ties counting against it."""
    true = logits.gather(1, target[:, None])  # (B, 1)
    # Other classes scoring at least as high as the true one, (B,); written as "not lower" so NaN counts against.
    rank = (~(logits < true)).sum(1) - 1
    return {k: rank < k for k in ks}


class ClsMetrics:
    """Streaming top-k accuracy: `update(logits, target)` per batch, `compute()` -> {"top1", "top5", ...}."""

    def __init__(self, num_classes: int, *, topk: Sequence[int] = (1, 5)) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not topk or any(k < 1 for k in topk):
            raise ValueError(f"topk must be positive integers, got {tuple(topk)}")
        self.num_classes = num_classes
        self.topk = tuple(topk)
        self.correct = dict.fromkeys(self.topk, 0)
        self.total = 0

    def update(self, logits: Tensor, target: Tensor | int) -> None:
        """logits: (B, C) or one sample's (C,); target: class indices (B,) or one index."""
        logits = logits.detach().float().cpu()
        target = torch.as_tensor(target).long().cpu().reshape(-1)  # (B,)
        if logits.dim() == 1:
            logits = logits[None]  # (1, C)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes or target.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits (B, {self.num_classes}) and targets (B,), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        bad = (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise ValueError(f"target classes {sorted(set(target[bad].tolist()))[:10]} outside [0, {self.num_classes})")
        for k, hit in topk_correct(logits, target, self.topk).items():
            self.correct[k] += int(hit.sum())
        self.total += len(target)

    def compute(self) -> dict[str, Any]:
        """-> {"top1", "top5", ... (in [0, 1], NaN before any sample), "num_images"}."""
        out: dict[str, Any] = {f"top{k}": (c / self.total if self.total else math.nan) for k, c in self.correct.items()}
        out["num_images"] = self.total
        return out


# --------------------------------------------------------------------------------------------------------------------
# Detection (COCO box AP)
# --------------------------------------------------------------------------------------------------------------------

# COCOeval.stats, in its order: AP over IoU .50:.95, at .50, at .75, per area; AR at 1, 10, 100 detections, per area.
COCO_STATS = (
    "map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small", "ar_medium",
    "ar_large",
)  # fmt: skip


def import_pycocotools() -> Any:
    """pycocotools' `coco` and `cocoeval` modules, or a ModuleNotFoundError that says how to install them."""
    try:
        from pycocotools import coco, cocoeval
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "COCO detection metrics need pycocotools, which is not installed: pip install jetvit[det]",
            name="pycocotools",
        ) from e
    return coco, cocoeval


class DetectionMetrics:
    """Streaming COCO box AP: `update(prediction, target)` per image, `compute()` runs COCOeval on the images seen.

    ground_truth: a parsed COCO instances file (`images`, `annotations`, `categories`), e.g. `CocoDetection`'s.
    """

    def __init__(self, ground_truth: dict[str, Any]) -> None:
        import_pycocotools()  # fail before any prediction is made, not at the end
        self.ground_truth = ground_truth
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def update(self, pred: dict[str, Tensor], target: dict[str, Any]) -> None:
        """pred: one image's {"boxes" (K, 4) [x, y, w, h] pixels, "scores" (K,), "category_ids" (K,)} (COCO ids);
        target: that image's {"image_id", ...} (`CocoDetection`'s)."""
        boxes, scores, cats = pred["boxes"], pred["scores"], pred["category_ids"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not len(boxes) == len(scores) == len(cats):
            raise ValueError(
                f"expected boxes (K, 4), scores (K,), category_ids (K,), got {tuple(boxes.shape)}, "
                f"{tuple(scores.shape)}, {tuple(cats.shape)}"
            )
        image_id = int(target["image_id"])
        self.image_ids.append(image_id)
        for box, score, cat in zip(boxes.tolist(), scores.tolist(), cats.tolist()):
            self.detections.append({"image_id": image_id, "category_id": int(cat), "bbox": box, "score": score})

    def compute(self) -> dict[str, Any]:
        """-> {"map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small",
        "ar_medium", "ar_large" (in [0, 1], NaN where undefined), "per_category_ap" {category id: AP .50:.95},
        "num_images", "num_detections"}."""
        import contextlib
        import io

        import numpy as np

        coco, cocoeval = import_pycocotools()
        out: dict[str, Any] = dict.fromkeys(COCO_STATS, math.nan)
        out.update(per_category_ap={}, num_images=len(set(self.image_ids)), num_detections=len(self.detections))
        if not self.image_ids:
            return out
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the table
            # Copies of the records: the evaluator writes into them ("ignore", "area", ids).
            gt = coco.COCO()
            gt.dataset = {**self.ground_truth, "annotations": [dict(a) for a in self.ground_truth["annotations"]]}
            gt.createIndex()
            if self.detections:
                dt = gt.loadRes([dict(d) for d in self.detections])
            else:  # loadRes refuses an empty list; no detection is a valid result (AP 0)
                dt = coco.COCO()
                dt.dataset = {k: self.ground_truth[k] for k in ("images", "categories")} | {"annotations": []}
                dt.createIndex()
            ev = cocoeval.COCOeval(gt, dt, iouType="bbox")
            ev.params.imgIds = sorted(set(self.image_ids))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out.update({k: (float(v) if v >= 0 else math.nan) for k, v in zip(COCO_STATS, ev.stats)})
        precision = ev.eval["precision"]  # (IoU thresholds, recall points, categories, area ranges, max dets)
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]  # all areas, 100 detections
            if (p > -1).any():
                out["per_category_ap"][int(cat)] = float(np.mean(p[p > -1]))
        return out
