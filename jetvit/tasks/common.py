"""What the task evaluations share: the model's device, bf16 autocast on CUDA, short-side resizing, and the loop that
scores a model's predictions over a dataset one image at a time."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (DINOv3 runs in bf16), plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resize_short_side(image: Tensor, short: int, *, multiple: int = 1) -> Tensor:
    """(B, C, H, W) -> bilinear resize so min(H, W) == short (aspect kept), both sides rounded up to `multiple`."""
    h, w = image.shape[-2:]
    s = short / min(h, w)
    nh = max(multiple, math.ceil(round(h * s) / multiple) * multiple)
    nw = max(multiple, math.ceil(round(w * s) / multiple) * multiple)
    if (nh, nw) == (h, w):
        return image
    return F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)


def evaluate_dataset(
    dataset: Any,
    predict: Callable[[Tensor], Tensor],
    metric: Any,
    *,
    desc: str,
    progress: bool,
    on_prediction: Callable[[int, Tensor, Any, Tensor], None] | None = None,
) -> dict[str, Any]:
    """Score every sample (image (3, H, W), target) of `dataset`: `predict(image)` gives the prediction (H, W) on the
    CPU, `metric.update(prediction, target)` takes it. Returns `metric.compute()` plus "seconds".

    on_prediction(index, image, target, prediction) is called per image, e.g. to save a figure.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, dynamic_ncols=True):
        image, target = dataset[i]
        pred = predict(image)
        metric.update(pred, target)
        if on_prediction is not None:
            on_prediction(i, image, target, pred)
    result = metric.compute()
    result["seconds"] = time.perf_counter() - start
    return result
