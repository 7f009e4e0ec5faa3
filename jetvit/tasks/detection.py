"""Object detection with YOLOS's own heads (class and box MLPs on the detection tokens), on COCO-format data.

A hybrid converted from a YOLOS teacher inherits the heads; a candidate of the search, or any model without them, is
scored with the teacher's heads on its own final detection tokens (`detections(model, head, x)`), as the depth task
uses the teacher's DPT head.

Prediction, as YOLOS and DETR evaluate on COCO:

- the image is resized so that its short side is `short_side` (800 for YOLOS-Base), capped so that the long side is
  at most `max_side` (1333), both sides rounded up to a multiple of the patch (jetvit's blocks need whole patches; the
  boxes are relative to the input, so the small stretch does not move them on the original image);
- `postprocess`: softmax over the num_labels + 1 classes, the last ("no object") dropped; each detection token gives
  one detection, its score the largest remaining probability and its label that class; its box, sigmoid
  (cx, cy, w, h) relative to the input, becomes [x, y, w, h] in pixels of the original image. All S detections are
  kept (no threshold): COCO's AP keeps the 100 best per image itself.

Labels and categories (`label_to_category`): a label index of the class head is mapped to a COCO category id of the
dataset by, in this order, an explicit mapping; the label names the model carries (HF `id2label`, in
`cfg.detection_head["labels"]`) matched to the category names; or the identity, label index == category id. The
released COCO checkpoints (`hustvl/yolos-*`) use COCO's 91-id numbering, label index == category id (80 of them
used, the others named "N/A"), so on COCO the names and the identity agree. Labels mapped to no category of the
dataset are dropped from the predictions.

Images: (3, H, W) RGB in [0, 1] from `jetvit.tasks.datasets.CocoDetection`; normalised here with the model's
statistics. Notation: B batch, S detection tokens, C = num_labels + 1 classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset

from jetvit.tasks.common import autocast, evaluate_dataset, model_device
from jetvit.tasks.config import DET_MAX_SIDE, DET_SHORT_SIDE
from jetvit.tasks.metrics import DetectionMetrics

# --------------------------------------------------------------------------------------------------------------------
# Labels and categories
# --------------------------------------------------------------------------------------------------------------------


def label_to_category(
    head: nn.Module, categories: dict[int, str], mapping: dict[int, int] | None = None
) -> tuple[dict[int, int], str]:
    """{label index: COCO category id} for the detection head `head` and a dataset's `categories` {id: name}, and
    how it was made: "explicit" (`mapping`), "names" (the head's label names) or "identity" (see the module
    docstring). Raises ValueError when a mapping names a label or category that does not exist, or when the
    identity needs labels the head does not have."""
    num_labels, names = head.cfg.num_labels, head.cfg.labels
    if mapping is not None:
        bad_labels = sorted(k for k in mapping if not 0 <= int(k) < num_labels)
        bad_cats = sorted(v for v in mapping.values() if int(v) not in categories)
        if bad_labels or bad_cats:
            raise ValueError(
                f"label map: labels {bad_labels} are not in 0..{num_labels - 1}, or categories {bad_cats} are not "
                f"among the dataset's {sorted(categories)}"
            )
        return {int(k): int(v) for k, v in mapping.items()}, "explicit"
    if names is not None:
        index = {name: i for i, name in enumerate(names) if names.count(name) == 1}
        if all(name in index for name in categories.values()):
            return {index[name]: cat for cat, name in categories.items()}, "names"
    too_large = sorted(c for c in categories if not 0 <= c < num_labels)
    if too_large:
        raise ValueError(
            f"the detection head has {num_labels} labels (0..{num_labels - 1}) but the dataset's categories "
            f"{too_large[:10]} lie outside them and its names do not match the head's; give a label map "
            f"(JSON {{label index: category id}})"
        )
    return {c: c for c in categories}, "identity"


def read_label_map(path: str) -> dict[int, int]:
    """A JSON file {"label index": category id, ...} -> {int: int}; ValueError naming the file otherwise."""
    from jetvit.io import read_json

    raw = read_json(path, expect=dict)
    if raw is None:
        raise FileNotFoundError(f"no label map file {path}")
    try:
        return {int(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: a label map is a JSON object {{label index: category id}} of integers ({e})") from e


# --------------------------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------------------------


def input_size(height: int, width: int, *, short_side: int, max_side: int, multiple: int) -> tuple[int, int]:
    """The (H, W) an image of `height` x `width` is resized to: short side `short_side`, long side at most
    `max_side` (aspect kept), each rounded up to `multiple`."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    h, w = (max(multiple, math.ceil(round(side * scale) / multiple) * multiple) for side in (height, width))
    return h, w


def detections(model: nn.Module, head: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised images (B, 3, H, W) -> `head` on `model`'s final normed detection tokens: (class logits (B, S, C),
    boxes (B, S, 4) sigmoid (cx, cy, w, h)), in fp32. The backbone runs under bf16 autocast on CUDA."""
    S = model.cfg.num_detection_tokens
    if not S:
        raise ValueError(f"a {model.cfg.family} model has no detection tokens; detection needs a YOLOS model")
    with torch.no_grad(), autocast(x.device):
        tokens = model(x)[:, -S:]  # (B, S, D): the detection tokens come last, in the teacher's order
    with torch.no_grad():
        logits, boxes = head(tokens.float())
    return logits.float(), boxes.float()


def postprocess(logits: Tensor, boxes: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """YOLOS / DETR outputs -> per image {"scores" (S,), "labels" (S,) int64, "boxes" (S, 4) [x, y, w, h] pixels}.

    logits (B, S, C), the last class "no object"; boxes (B, S, 4) relative (cx, cy, w, h); sizes: each image's
    original (H, W)."""
    if logits.shape[:2] != boxes.shape[:2] or boxes.shape[-1] != 4 or len(sizes) != logits.shape[0]:
        raise ValueError(
            f"expected logits (B, S, C), boxes (B, S, 4) and B sizes, got {tuple(logits.shape)}, "
            f"{tuple(boxes.shape)} and {len(sizes)} sizes"
        )
    probs = logits.float().softmax(-1)[..., :-1]  # (B, S, C - 1): "no object" dropped
    scores, labels = probs.max(-1)  # (B, S) each
    cx, cy, w, h = boxes.float().unbind(-1)  # each (B, S)
    out = []
    for i, (H, W) in enumerate(sizes):
        xywh = torch.stack(((cx[i] - w[i] / 2) * W, (cy[i] - h[i] / 2) * H, w[i] * W, h[i] * H), dim=-1)  # (S, 4)
        out.append({"scores": scores[i], "labels": labels[i], "boxes": xywh})
    return out


def predict_image(
    model: nn.Module,
    head: nn.Module,
    image: Tensor,
    *,
    label_map: dict[int, int],
    short_side: int = DET_SHORT_SIDE,
    max_side: int = DET_MAX_SIDE,
) -> dict[str, Tensor]:
    """One image (3, H, W) in [0, 1] -> its detections on the CPU, {"scores" (K,), "category_ids" (K,), "boxes"
    (K, 4) [x, y, w, h] pixels of this image}: the labels `label_map` maps to a category, best score first."""
    H, W = image.shape[-2:]
    size = input_size(H, W, short_side=short_side, max_side=max_side, multiple=model.cfg.patch_size)
    x = image[None].to(model_device(model))
    if size != (H, W):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < H or size[1] < W)
    logits, boxes = detections(model, head, model.normalize(x))
    (pred,) = postprocess(logits.cpu(), boxes.cpu(), [(H, W)])
    lut = torch.full((logits.shape[-1],), -1, dtype=torch.int64)  # label -> category id, -1: none
    for label, cat in label_map.items():
        lut[label] = cat
    cats = lut[pred["labels"]]
    keep = (cats >= 0).nonzero()[:, 0]
    keep = keep[pred["scores"][keep].argsort(descending=True)]
    return {"scores": pred["scores"][keep], "category_ids": cats[keep], "boxes": pred["boxes"][keep]}


def _base_dataset(dataset: Any) -> Any:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    dataset: Any,
    *,
    head: nn.Module | None = None,
    label_map: dict[int, int] | None = None,
    short_side: int = DET_SHORT_SIDE,
    max_side: int = DET_MAX_SIDE,
    progress: bool = True,
    on_prediction: Callable[[int, Tensor, Any, dict[str, Tensor]], None] | None = None,
) -> dict[str, Any]:
    """COCO box AP of `model` with `head` (default: the model's own detection head) on a `CocoDetection` (or a
    Subset of one). label_map: an explicit {label: category id}, else `label_to_category`'s. Returns
    `DetectionMetrics.compute()` plus "label_map" (how labels were mapped) and "seconds"."""
    head = head if head is not None else getattr(model, "detection_head", None)
    if head is None:
        raise ValueError("the model has no detection head and none was given (a YOLOS object-detection teacher's)")
    base = _base_dataset(dataset)
    mapping, how = label_to_category(head, base.categories, label_map)
    head.eval()

    def predict(image: Tensor) -> dict[str, Tensor]:
        return predict_image(model, head, image, label_map=mapping, short_side=short_side, max_side=max_side)

    metrics = DetectionMetrics(base.ground_truth)
    result = evaluate_dataset(
        dataset, predict, metrics, desc="eval det", progress=progress, on_prediction=on_prediction
    )
    return {**result, "label_map": how}
