"""Depth evaluation: a model's own DPT head (`predict_depth`) or a given DPT head on the model's intermediates.

Inputs follow Depth-Anything-V2's inference: the image is resized so its short side is `short_side` (518 for DAv2),
both sides rounded up to a multiple of the patch size, normalised with the model's statistics; the prediction is
resized back to the ground truth's size (bilinear). Relative heads output disparity-like values (larger = closer)
and are scored after a least-squares scale-and-shift fit in disparity space; metric heads output metres, scored as
they are (see `jetvit.tasks.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.heads import DPTHead
from jetvit.tasks.common import autocast, evaluate_dataset, model_device, resize_short_side
from jetvit.tasks.config import DEPTH_SHORT_SIDE, MAX_DEPTH, MIN_DEPTH
from jetvit.tasks.metrics import Align, DA2KAccuracy, DepthMetrics


def depth_head_of(model: nn.Module, head: DPTHead | None) -> DPTHead:
    """The head to use: `head` if given, else the model's own; ValueError when there is neither."""
    head = head if head is not None else getattr(model, "depth_head", None)
    if head is None:
        raise ValueError("no depth head: the model carries none (only Depth-Anything-V2 teachers do); pass a DPT head")
    return head


@torch.no_grad()
def predict_depth(
    model: nn.Module, image: Tensor, *, head: DPTHead | None = None, short_side: int = DEPTH_SHORT_SIDE
) -> Tensor:
    """image (B, 3, H, W) RGB in [0, 1] -> depth or disparity (B, H, W) at the image's size, in float32."""
    head = depth_head_of(model, head)
    device = model_device(model)
    x = model.normalize(image.to(device))
    x = resize_short_side(x, short_side, multiple=model.cfg.patch_size)  # (B, 3, H', W'), patch multiples
    with autocast(device):
        feats = model.block_features(x, head.cfg.layers)
        out = head(feats, x.shape[-2:])
    out = out.float()[:, None]  # (B, 1, H', W')
    return F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def default_align(head: DPTHead) -> Align:
    return "none" if head.cfg.metric else "disparity"


@torch.no_grad()
def evaluate_depth(
    model: nn.Module,
    dataset: Any,
    *,
    head: DPTHead | None = None,
    align: Align | None = None,
    short_side: int = DEPTH_SHORT_SIDE,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    progress: bool = True,
    on_prediction: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> dict[str, Any]:
    """AbsRel and delta1 over `dataset` (samples (image (3, H, W), depth (H, W), 0 = invalid)).

    align defaults to "disparity" for relative heads and "none" for metric ones. Returns DepthMetrics.compute()
    plus "seconds". on_prediction(index, image, depth_gt, prediction (H, W)) is called per image.
    """
    head = depth_head_of(model, head).eval()
    metrics = DepthMetrics(align=align or default_align(head), min_depth=min_depth, max_depth=max_depth)
    return _evaluate(model, dataset, head, metrics, "eval depth", short_side, progress, on_prediction)


@torch.no_grad()
def evaluate_da2k(
    model: nn.Module,
    dataset: Any,
    *,
    head: DPTHead | None = None,
    larger_is_closer: bool | None = None,
    short_side: int = DEPTH_SHORT_SIDE,
    progress: bool = True,
    on_prediction: Callable[[int, Tensor, Any, Tensor], None] | None = None,
) -> dict[str, Any]:
    """DA2K pair-ordering accuracy over `dataset` (samples (image, pairs)). larger_is_closer defaults to True for
    relative (disparity-like) heads and False for metric (depth) heads."""
    head = depth_head_of(model, head).eval()
    if larger_is_closer is None:
        larger_is_closer = not head.cfg.metric
    acc = DA2KAccuracy(larger_is_closer=larger_is_closer)
    return _evaluate(model, dataset, head, acc, "eval DA2K", short_side, progress, on_prediction)


def _evaluate(
    model: nn.Module,
    dataset: Any,
    head: DPTHead,
    metric: Any,
    desc: str,
    short_side: int,
    progress: bool,
    on_prediction: Callable[[int, Tensor, Any, Tensor], None] | None,
) -> dict[str, Any]:
    """`metric` over `dataset` (samples (image, target)) of `head`'s depth predictions."""

    def predict(image: Tensor) -> Tensor:  # (3, H, W) -> (H, W)
        return predict_depth(model, image[None], head=head, short_side=short_side)[0].cpu()

    return evaluate_dataset(dataset, predict, metric, desc=desc, progress=progress, on_prediction=on_prediction)
