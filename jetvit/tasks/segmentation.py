"""Semantic segmentation with a linear probe on frozen features (DINOv3's protocol), and sliding-window evaluation.

Training: the backbone is frozen and its features are computed under no_grad; only the `LinearSegHead` learns
(AdamW, lr 1e-3, weight decay 1e-3, linear warm-up then cosine decay). Samples are rescaled by a random factor in
[0.5, 2] around a base size whose short side is the crop, randomly cropped (labels padded with the ignore label)
and flipped. Evaluation resizes each image to the evaluation short side, averages logits over overlapping crops
(`slide_inference`), upsamples them to the label's size and accumulates one confusion matrix.

Features: normed patch tokens of block `layer` (default the last), (B, D, h, w), from `model.block_features`.
Images: (B, 3, H, W) RGB in [0, 1] from `jetvit.tasks.datasets`; normalised here with the model's mean and std.
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.heads import LinearSegConfig, LinearSegHead
from jetvit.tasks.common import (
    autocast,
    evaluate_dataset,
    fit_probe,
    load_head,
    model_device,
    resize_short_side,
    save_head,
)
from jetvit.tasks.config import ProbeConfig
from jetvit.tasks.datasets import IGNORE
from jetvit.tasks.metrics import SegMetrics

# --------------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------------


def patch_features(model: nn.Module, x: Tensor, layer: int) -> Tensor:
    """Normalised images (B, 3, H, W) -> normed patch features of block `layer`, (B, D, h, w)."""
    return model.block_features(x, [layer])[0][0]


# --------------------------------------------------------------------------------------------------------------------
# Sliding-window inference
# --------------------------------------------------------------------------------------------------------------------


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be positive, got {v}")
    return int(a), int(b)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of length `crop` every `stride` covering [0, size); the last one ends at `size`."""
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def slide_inference(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    *,
    crop: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
) -> Tensor:
    """Average the logits of overlapping crops.

    fn: crops (B, 3, ch, cw) -> logits (B, num_classes, ch, cw). image: (B, 3, H, W), already normalised.
    Images smaller than the crop are zero-padded at the bottom/right (zero = the mean colour after normalisation)
    and the padding is cut from the result. Returns logits (B, num_classes, H, W).
    """
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise ValueError(f"stride {stride} larger than crop {crop} would leave pixels unseen")
    b, _, h, w = image.shape
    ph, pw = max(h, ch), max(w, cw)
    if (ph, pw) != (h, w):
        image = F.pad(image, (0, pw - w, 0, ph - h))  # (B, 3, ph, pw)
    logits = image.new_zeros(b, num_classes, ph, pw, dtype=torch.float32)
    count = image.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    for y in window_starts(ph, ch, sh):
        for x in window_starts(pw, cw, sw):
            out = fn(image[:, :, y : y + ch, x : x + cw])
            if out.shape != (b, num_classes, ch, cw):
                raise ValueError(f"fn returned {tuple(out.shape)} for a crop, expected {(b, num_classes, ch, cw)}")
            logits[:, :, y : y + ch, x : x + cw] += out.float()
            count[:, :, y : y + ch, x : x + cw] += 1
    assert count.min() > 0
    return (logits / count)[:, :, :h, :w]


# --------------------------------------------------------------------------------------------------------------------
# Probe training
# --------------------------------------------------------------------------------------------------------------------


def check_patch_multiple(model: nn.Module, **sizes: int) -> None:
    p = model.cfg.patch_size
    bad = {k: v for k, v in sizes.items() if v % p}
    if bad:
        raise ValueError(f"{bad} must be multiples of the patch size {p}")


def random_scale_crop(
    image: Tensor, label: Tensor, *, crop: int, scale: tuple[float, float], rng: random.Random
) -> tuple[Tensor, Tensor]:
    """One sample: image (3, H, W), label (H, W) -> (3, crop, crop), (crop, crop), rescaled, cropped and flipped.

    The base size puts the short side at `crop`; a factor in `scale` multiplies it. Regions outside the image are
    zero in the image and IGNORE in the label.
    """
    h, w = image.shape[-2:]
    s = crop / min(h, w) * rng.uniform(*scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)[0]
    label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    if nh < crop or nw < crop:
        image = F.pad(image, (0, max(0, crop - nw), 0, max(0, crop - nh)))
        label = F.pad(label, (0, max(0, crop - nw), 0, max(0, crop - nh)), value=IGNORE)
    y = rng.randint(0, image.shape[-2] - crop)
    x = rng.randint(0, image.shape[-1] - crop)
    image, label = image[:, y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]
    if rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


def train_probe(
    model: nn.Module,
    dataset: Any,
    cfg: ProbeConfig,
    *,
    num_classes: int,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> LinearSegHead:
    """Train a `LinearSegHead` on `model`'s frozen features of `dataset` (samples (image, label)); returns it in eval
    mode on the model's device. `log`, if given, receives {"step", "loss", "lr"} every `cfg.log_every` steps."""
    check_patch_multiple(model, crop=cfg.crop)
    device = model_device(model)
    torch.manual_seed(cfg.seed)
    head = LinearSegHead(LinearSegConfig(in_dim=model.cfg.dim, num_classes=num_classes, dropout=cfg.dropout))
    head.to(device).train()
    model.eval()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_of(image: Tensor, label: Tensor) -> Tensor | None:
        x = model.normalize(image)
        with torch.no_grad(), autocast(device):
            feats = patch_features(model, x, cfg.layer)
        logits = head(feats.float(), x.shape[-2:])
        return F.cross_entropy(logits, label, ignore_index=IGNORE) if (label != IGNORE).any() else None

    augment = functools.partial(random_scale_crop, crop=cfg.crop, scale=(cfg.scale_min, cfg.scale_max))
    return fit_probe(
        head, dataset, cfg, augment=augment, loss_of=loss_of, opt=opt, desc="probe", progress=progress, log=log
    )


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_segmentation(
    model: nn.Module, head: LinearSegHead, image: Tensor, *, short_side: int, crop: int, stride: int, layer: int = -1
) -> Tensor:
    """image (B, 3, H, W) RGB in [0, 1] -> logits (B, classes, H, W): resize, sliding windows, resize back."""
    check_patch_multiple(model, crop=crop)
    device = model_device(model)
    x = model.normalize(image.to(device))
    x = resize_short_side(x, short_side)

    def crop_logits(c: Tensor) -> Tensor:
        with autocast(device):
            feats = patch_features(model, c, layer)
        return head(feats.float(), c.shape[-2:])

    logits = slide_inference(crop_logits, x, crop=crop, stride=stride, num_classes=head.cfg.num_classes)
    return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    head: LinearSegHead,
    dataset: Any,
    *,
    short_side: int = ProbeConfig.eval_short_side,
    crop: int = ProbeConfig.eval_crop,
    stride: int = ProbeConfig.eval_stride,
    layer: int = -1,
    progress: bool = True,
    on_prediction: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> dict[str, Any]:
    """mIoU of `head` on `model` over `dataset` (one image at a time). Returns SegMetrics.compute() plus "seconds".

    on_prediction(index, image (3, H, W), label (H, W), pred (H, W)) is called per image, e.g. to save a figure.
    """
    head.eval()

    def predict(image: Tensor) -> Tensor:  # (3, H, W) -> class ids (H, W)
        logits = predict_segmentation(
            model, head, image[None], short_side=short_side, crop=crop, stride=stride, layer=layer
        )
        return logits.argmax(1)[0].cpu()

    metrics = SegMetrics(head.cfg.num_classes, ignore_index=IGNORE)
    return evaluate_dataset(dataset, predict, metrics, desc="eval seg", progress=progress, on_prediction=on_prediction)


# --------------------------------------------------------------------------------------------------------------------
# Saving and loading a probe
# --------------------------------------------------------------------------------------------------------------------


def save_probe(head: LinearSegHead, directory: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> Path:
    """Write `head.safetensors` and `head.json` ({"config": LinearSegConfig fields, "meta": ...}) atomically."""
    return save_head(head, directory, fmt="jetvit-seg-head", meta=meta)


def load_probe(path: str | os.PathLike) -> tuple[LinearSegHead, dict[str, Any]]:
    """Load a probe written by `save_probe` from its directory (or its `head.safetensors`). Returns (head, meta)."""
    return load_head(
        path, LinearSegHead, LinearSegConfig, what="segmentation head", hint="write one with `jetvit probe`"
    )
