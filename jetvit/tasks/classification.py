"""Image classification with a linear probe on frozen features (DINO v1's linear evaluation), and its evaluation.

Training: the backbone is frozen and its features are computed under no_grad; only the `LinearClsHead` learns. The
head reads the normed CLS tokens of the last `n_last_blocks` blocks, plus (avgpool) the last block's mean patch
token; DINO uses 4 blocks for ViT-S/16 and 1 block + avgpool for ViT-B/16. DINO trains with SGD (momentum 0.9, no
weight decay, lr 0.001 * batch / 256, cosine decay) for 100 epochs; AdamW is offered for short probes. Samples are
random-resized crops (scale 0.08..1, aspect 3/4..4/3) of side `crop`, randomly flipped. Evaluation resizes the short
side to `eval_short_side` (DINO: 256) and takes the centre `eval_crop` (224).

Video clips (UCF101-style action recognition, `clips=True`): a sample is a clip of up to T frames (`frames` evenly
spaced, `jetvit.tasks.datasets.VideoFolderClassification`); the probe's features (the same CLS tokens and mean patch
token) are computed per frame and averaged over the clip's frames, and the linear layer classifies the mean, so a
clip's logits are the mean of its frames' logits. Training crops every frame of a clip with the same random crop.

Features: `model.block_features(x, last blocks)` -> per block (patches (B, D, h, w), prefix (B, P, D)),
prefix[:, 0] the CLS token. Images: (B, 3, H, W) RGB in [0, 1] from `jetvit.tasks.datasets`; normalised here with the
model's mean and std. A batch of clips is their frames concatenated, (sum of T_i, 3, H, W), and the frame counts (B,).
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.heads import LinearClsConfig, LinearClsHead
from jetvit.tasks.common import (
    autocast,
    fit_probe,
    load_head,
    model_device,
    resize_short_side,
    save_head,
)
from jetvit.tasks.config import ClsProbeConfig
from jetvit.tasks.metrics import ClsMetrics
from jetvit.tasks.segmentation import check_patch_multiple

# --------------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------------


def cls_logits(model: nn.Module, head: LinearClsHead, x: Tensor) -> Tensor:
    """Normalised images (B, 3, H, W) -> logits (B, classes); the backbone runs under bf16 autocast on CUDA."""
    blocks = list(range(-head.cfg.n_last_blocks, 0))
    with torch.no_grad(), autocast(x.device):
        feats = model.block_features(x, blocks)  # n_last_blocks x ((B, D, h, w), (B, P, D))
    return head([(patches.float(), prefix.float()) for patches, prefix in feats])


def clip_logits(model: nn.Module, head: LinearClsHead, frames: Tensor, counts: Tensor) -> Tensor:
    """Normalised frames of B clips, concatenated (sum of counts, 3, H, W), and each clip's frame count (B,) ->
    logits (B, classes) of the clips' mean features."""
    blocks = list(range(-head.cfg.n_last_blocks, 0))
    with torch.no_grad(), autocast(frames.device):
        feats = model.block_features(frames, blocks)  # n_last_blocks x ((sum T, D, h, w), (sum T, P, D))
    per_frame = head.features([(patches.float(), prefix.float()) for patches, prefix in feats])  # (sum T, F)
    counts = counts.to(per_frame.device)
    clip = torch.repeat_interleave(torch.arange(len(counts), device=per_frame.device), counts)  # (sum T,)
    sums = per_frame.new_zeros(len(counts), per_frame.shape[1]).index_add_(0, clip, per_frame)  # (B, F)
    return head.linear(sums / counts[:, None])


def collate_clips(samples: list[tuple[Tensor, int]]) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """Clips (T_i, 3, H, W) with labels -> ((frames (sum T_i, 3, H, W), counts (B,)), labels (B,))."""
    frames = [clip for clip, _ in samples]
    counts = torch.tensor([len(f) for f in frames])
    return (torch.cat(frames), counts), torch.tensor([label for _, label in samples])


# --------------------------------------------------------------------------------------------------------------------
# Probe training
# --------------------------------------------------------------------------------------------------------------------


def random_resized_crop(image: Tensor, *, crop: int, scale: tuple[float, float], rng: random.Random) -> Tensor:
    """image (3, H, W) (or a clip (T, 3, H, W): one crop for every frame) -> (..., 3, crop, crop): a random area
    fraction in `scale` with aspect in [3/4, 4/3] (log-uniform), resized to `crop` and flipped half the time;
    torchvision's RandomResizedCrop, falling back to the centre."""
    h, w = image.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
            break
    else:
        ch = cw = min(h, w)
        y, x = (h - ch) // 2, (w - cw) // 2
    patch = image[..., y : y + ch, x : x + cw].reshape(-1, *image.shape[-3:-2], ch, cw)  # (T, 3, ch, cw)
    out = F.interpolate(patch, size=(crop, crop), mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(*image.shape[:-2], crop, crop)
    return out.flip(-1) if rng.random() < 0.5 else out


def center_crop(image: Tensor, *, short_side: int, crop: int) -> Tensor:
    """image (3, H, W) (or a clip (T, 3, H, W)) -> (..., 3, crop, crop): short side resized to `short_side`, then the
    centre crop."""
    x = resize_short_side(image.reshape(-1, *image.shape[-3:]), short_side)  # (T, 3, h, w)
    h, w = x.shape[-2:]
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    return x[..., y0 : y0 + crop, x0 : x0 + crop].reshape(*image.shape[:-2], crop, crop)


def _resized_crop(image: Tensor, label: int, *, rng: random.Random, crop: int, scale: tuple[float, float]):
    return random_resized_crop(image, crop=crop, scale=scale, rng=rng), label


class _CenterCropped(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, *, short_side: int, crop: int) -> None:
        self.dataset, self.short_side, self.crop = dataset, short_side, crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.dataset[i]
        return center_crop(image, short_side=self.short_side, crop=self.crop), label


def _optimizer(params: Any, cfg: ClsProbeConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_cls_probe(
    model: nn.Module,
    dataset: Any,
    cfg: ClsProbeConfig,
    *,
    num_classes: int,
    clips: bool = False,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> LinearClsHead:
    """Train a `LinearClsHead` on `model`'s frozen features of `dataset` (samples (image, class index), or with
    `clips` (frames (T, 3, H, W), class index), a batch being `cfg.batch_size` clips); returns it in eval mode on the
    model's device. `log`, if given, receives {"step", "loss", "lr"} every `cfg.log_every` steps."""
    check_patch_multiple(model, crop=cfg.crop)
    if cfg.n_last_blocks > len(model.blocks):
        raise ValueError(f"n_last_blocks {cfg.n_last_blocks} exceeds the model's {len(model.blocks)} blocks")
    device = model_device(model)
    torch.manual_seed(cfg.seed)
    head_cfg = LinearClsConfig(
        in_dim=model.cfg.dim, num_classes=num_classes, n_last_blocks=cfg.n_last_blocks, avgpool=cfg.avgpool
    )
    head = LinearClsHead(head_cfg).to(device).train()
    model.eval()
    opt = _optimizer(head.parameters(), cfg)

    def loss_of(inputs: Tensor | tuple[Tensor, Tensor], label: Tensor) -> Tensor:
        return F.cross_entropy(_logits(model, head, inputs, clips=clips), label)

    return fit_probe(
        head,
        dataset,
        cfg,
        augment=functools.partial(_resized_crop, crop=cfg.crop, scale=(cfg.scale_min, cfg.scale_max)),
        loss_of=loss_of,
        opt=opt,
        collate_fn=collate_clips if clips else None,
        desc="video probe" if clips else "cls probe",
        progress=progress,
        log=log,
    )


def _logits(model: nn.Module, head: LinearClsHead, inputs: Tensor | tuple[Tensor, Tensor], *, clips: bool) -> Tensor:
    """A batch of images (B, 3, H, W) in [0, 1], or of clips (frames, counts) (`collate_clips`) -> logits (B, C)."""
    if clips:
        frames, counts = inputs
        return clip_logits(model, head, model.normalize(frames), counts)
    return cls_logits(model, head, model.normalize(inputs))


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_classification(
    model: nn.Module,
    head: LinearClsHead,
    dataset: Any,
    *,
    short_side: int = ClsProbeConfig.eval_short_side,
    crop: int = ClsProbeConfig.eval_crop,
    batch_size: int = ClsProbeConfig.eval_batch_size,
    num_workers: int = 0,
    topk: tuple[int, ...] = (1, 5),
    clips: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-k accuracy of `head` on `model` over `dataset` (centre crops, in batches; with `clips`, per clip over a
    `VideoFolderClassification`, `batch_size` clips at a time). Returns ClsMetrics.compute() ({"top1", "top5",
    "num_images"}: images, or clips) plus "seconds"."""
    from tqdm import tqdm

    check_patch_multiple(model, crop=crop)
    if crop > short_side:
        raise ValueError(f"crop {crop} exceeds short_side {short_side}")
    head.eval()
    device = model_device(model)
    loader = torch.utils.data.DataLoader(
        _CenterCropped(dataset, short_side=short_side, crop=crop),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_clips if clips else None,
    )
    metrics = ClsMetrics(head.cfg.num_classes, topk=topk)
    start = time.perf_counter()
    desc = "eval video" if clips else "eval cls"
    for inputs, label in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True):
        inputs = (inputs[0].to(device), inputs[1]) if clips else inputs.to(device)
        metrics.update(_logits(model, head, inputs, clips=clips), label)
    result = metrics.compute()
    result["seconds"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------------------------------
# Saving and loading a probe
# --------------------------------------------------------------------------------------------------------------------


def save_cls_probe(head: LinearClsHead, directory: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> Path:
    """Write `head.safetensors` and `head.json` ({"config": LinearClsConfig fields, "meta": ...}) atomically."""
    return save_head(head, directory, fmt="jetvit-cls-head", meta=meta)


def load_cls_probe(path: str | os.PathLike) -> tuple[LinearClsHead, dict[str, Any]]:
    """Load a probe written by `save_cls_probe` from its directory (or its `head.safetensors`). Returns (head, meta)."""
    return load_head(
        path,
        LinearClsHead,
        LinearClsConfig,
        what="classification head",
        hint="write one with `jetvit probe --task cls`",
    )
