"""Depth losses of the student's depth head against pseudo-labels: relative depth agrees only up to an affine map.

- `ssi_mse`: least-squares scale-and-shift alignment of the prediction to the target, then the MSE relative to the
  target's variance (jetvit's original loss).
- `ssi_gm`: Depth Anything's affine-invariant loss plus MiDaS's multi-scale gradient matching, the losses Depth
  Anything V2 trains with (below).

The affine-invariant loss (MiDaS, Ranftl et al., TPAMI 2022, Sec. 5, the "ssi" loss with median/MAD; Depth
Anything V1, Yang et al., CVPR 2024, eq. 1-2). Each map d is normalised over its valid pixels by

    t(d) = median(d),   s(d) = mean_i |d_i - t(d)|,   d^ = (d - t(d)) / s(d)

and L_ssi = mean_i |p^_i - y^_i| over the valid pixels (Depth Anything's 1/HW, not MiDaS's 1/2M). For an even
count the median is the mean of the two middle values (any value between them gives the same s(d), but not the same
d^). The prediction's t and s are part of the graph, as in MiDaS.

The gradient-matching loss (MiDaS Sec. 5 L_reg, as in its released `GradientLoss`), with R = p^ - y^ (the same
aligned maps):

    L_gm = sum_{k=0..3} (1 / M_k) sum_i (|grad_x R^k_i| + |grad_y R^k_i|)

where R^k is R subsampled by 2^k (every 2^k-th pixel, as MiDaS's `[:, ::step, ::step]`), grad_x / grad_y are forward
differences counted only where both pixels are valid, and M_k is the number of valid pixels of the batch at scale k
(MiDaS's batch-based reduction; the scales are summed, not averaged). A constant offset of R has no gradient.

Why `ssi_gm = L_ssi + 2 L_gm`: Depth Anything V2 (Yang et al., NeurIPS 2024, Sec. 4 and its implementation details)
trains with L_ssi and L_gm, which it finds "super beneficial to the depth sharpness" with precise (synthetic) labels,
at a weight ratio of 1:2; its students learn from the teacher's pseudo-labels with the same losses, which is what the
fine-tuning here does (pseudo-labels of the teacher, or of `distill.depth_teacher`, on unlabeled images). Its
released metric fine-tuning (`metric_depth/`) uses SiLog instead, which needs metric labels that pseudo-labels of a
relative teacher are not. Both losses work on the head's output as it is (disparity-like for DAv2's relative heads).

Notation: B batch, H x W map.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal, get_args

import torch
from torch import Tensor

DepthLoss = Literal["ssi_mse", "ssi_gm"]
DEPTH_LOSSES: tuple[str, ...] = get_args(DepthLoss)


def depth_loss_fn(name: DepthLoss, *, gradient_weight: float = 2.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss `(pred (B, H, W), target (B, H, W)) -> scalar` called `name` (`distill.depth_loss`)."""
    if name == "ssi_mse":
        return ssi_mse
    if name == "ssi_gm":
        return partial(ssi_gm, gradient_weight=gradient_weight)
    raise ValueError(f"distill.depth_loss {name!r} is not one of {', '.join(DEPTH_LOSSES)}")


def ssi_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Scale-and-shift-invariant MSE of depth maps (B, H, W), relative to the target's variance.

    Each prediction is aligned to its target by least squares (s * pred + t) before the error, as relative
    depth from different models agrees only up to an affine map.
    """
    p, t = pred.flatten(1).float(), target.flatten(1).float()  # (B, HW)
    pc, tc = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    scale = (pc * tc).sum(1, keepdim=True) / pc.square().sum(1, keepdim=True).clamp_min(1e-12)
    err = (scale * pc - tc).square().mean(1)
    return (err / tc.square().mean(1).clamp_min(1e-12)).mean()


def normalize_affine(d: Tensor, valid: Tensor, *, eps: float = 1e-6) -> Tensor:
    """(d - median(d)) / mean|d - median(d)| of each map over its valid pixels; d (B, H, W), valid (B, H, W) bool.

    Returns (B, H, W) in float32 (float64 for float64 input), zero at invalid pixels (and everywhere in a map
    without valid pixels).
    """
    flat, v = _wide(d).flatten(1), valid.flatten(1)  # (B, HW)
    n = v.sum(1, keepdim=True)  # (B, 1) valid pixels per map
    ordered = torch.where(v, flat, torch.full_like(flat, float("inf"))).sort(1).values  # valid first, ascending
    lo, hi = (n - 1).clamp_min(0) // 2, n // 2  # the two middle positions (equal for an odd count)
    t = 0.5 * (ordered.gather(1, lo) + ordered.gather(1, hi))  # (B, 1)
    t = torch.where(n > 0, t, torch.zeros_like(t))  # a map without valid pixels: inf above, unused
    dev = torch.where(v, flat - t, torch.zeros_like(flat))
    s = dev.abs().sum(1, keepdim=True) / n.clamp_min(1)  # (B, 1)
    return (dev / s.clamp_min(eps)).view(d.shape)


def ssi_mae(pred: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Depth Anything's affine-invariant loss: mean |p^ - y^| over the valid pixels of the batch (module docstring).

    pred, target (B, H, W); mask (B, H, W) bool, True where the target is valid (None: everywhere).
    """
    valid = _valid(target, mask)
    p, y = normalize_affine(pred, valid), normalize_affine(target, valid)
    return (p - y).abs().sum() / valid.sum().clamp_min(1)


def gradient_matching(pred: Tensor, target: Tensor, *, mask: Tensor | None = None, scales: int = 4) -> Tensor:
    """MiDaS's multi-scale gradient-matching loss of two already aligned maps (module docstring).

    pred, target (B, H, W); mask (B, H, W) bool, True where valid (None: everywhere). Scale k reads every 2^k-th
    pixel; each scale's sum is divided by its number of valid pixels, and the scales are summed.
    """
    valid = _valid(target, mask)
    total = _wide(pred).new_zeros(())
    for k in range(scales):
        step = 2**k
        m = valid[:, ::step, ::step].float()  # (B, h, w)
        r = (_wide(pred[:, ::step, ::step]) - _wide(target[:, ::step, ::step])) * m  # (B, h, w)
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs() * (m[:, :, 1:] * m[:, :, :-1])  # (B, h, w-1)
        gy = (r[:, 1:, :] - r[:, :-1, :]).abs() * (m[:, 1:, :] * m[:, :-1, :])  # (B, h-1, w)
        total = total + (gx.sum() + gy.sum()) / m.sum().clamp_min(1)
    return total


def ssi_gm(
    pred: Tensor, target: Tensor, *, mask: Tensor | None = None, gradient_weight: float = 2.0, scales: int = 4
) -> Tensor:
    """L_ssi + gradient_weight * L_gm on the median/MAD-aligned maps (module docstring); (B, H, W) each -> scalar."""
    valid = _valid(target, mask)
    p, y = normalize_affine(pred, valid), normalize_affine(target, valid)
    ssi = (p - y).abs().sum() / valid.sum().clamp_min(1)
    if gradient_weight == 0:
        return ssi
    return ssi + gradient_weight * gradient_matching(p, y, mask=valid, scales=scales)


def _wide(x: Tensor) -> Tensor:
    """x in float32 at least: the head's bf16 output under autocast is too coarse for the medians."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _valid(target: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(target.shape, dtype=torch.bool, device=target.device)
    if mask.shape != target.shape:
        raise ValueError(f"depth loss: mask of shape {tuple(mask.shape)} for maps of shape {tuple(target.shape)}")
    return mask.bool()
