"""Downstream scorers for the attention search: `scorer(model) -> float`, higher is better.

Each scorer holds a head fitted on the teacher (a linear segmentation probe, or the teacher's DPT depth head) and a
fixed held-out subset, applies the head to the candidate's features, and returns one number. `.name` says what the
number is; `.last_seconds` and `.last_result` record the most recent call, so the search can report its cost.
"""

from __future__ import annotations

import random
import time
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from jetvit.heads import DPTHead, LinearSegHead
from jetvit.tasks.depth import evaluate_da2k, evaluate_depth
from jetvit.tasks.segmentation import evaluate_segmentation


def fixed_subset(dataset: Dataset, size: int | None, *, seed: int = 0) -> Dataset:
    """The same `size` samples of `dataset` on every call (seeded, sorted indices); all of it when size is None."""
    n = len(dataset)
    if size is None or size >= n:
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return Subset(dataset, sorted(random.Random(seed).sample(range(n), size)))


class SegmentationScorer:
    """mIoU (in [0, 1]) of a probe trained on the teacher, applied to a candidate's features on a fixed subset."""

    name = "miou"

    def __init__(
        self,
        head: LinearSegHead,
        dataset: Dataset,
        *,
        size: int | None = None,
        seed: int = 0,
        short_side: int = 512,
        crop: int = 512,
        stride: int = 341,
        layer: int = -1,
    ) -> None:
        self.head = head.eval()
        self.dataset = fixed_subset(dataset, size, seed=seed)
        self.options = {"short_side": short_side, "crop": crop, "stride": stride, "layer": layer}
        self.last_seconds: float | None = None
        self.last_result: dict[str, Any] | None = None

    def __call__(self, model: nn.Module) -> float:
        start = time.perf_counter()
        self.head.to(next(model.parameters()).device)
        result = evaluate_segmentation(model, self.head, self.dataset, progress=False, **self.options)
        self.last_seconds = time.perf_counter() - start
        self.last_result = result
        return float(result["miou"])


DEPTH_SCORES = ("delta1", "neg_abs_rel", "da2k")


class DepthScorer:
    """The teacher's DPT head on a candidate's intermediates, on a fixed subset.

    score: "delta1" (depth dataset), "neg_abs_rel" (depth dataset, -AbsRel so higher is better) or "da2k" (DA2K
    dataset, pair-ordering accuracy).
    """

    def __init__(
        self,
        head: DPTHead,
        dataset: Dataset,
        *,
        score: str = "delta1",
        size: int | None = None,
        seed: int = 0,
        short_side: int = 518,
    ) -> None:
        if score not in DEPTH_SCORES:
            raise ValueError(f"depth score must be one of {DEPTH_SCORES}, got {score!r}")
        self.head = head.eval()
        self.score = score
        self.name = score
        self.dataset = fixed_subset(dataset, size, seed=seed)
        self.short_side = short_side
        self.last_seconds: float | None = None
        self.last_result: dict[str, Any] | None = None

    def __call__(self, model: nn.Module) -> float:
        start = time.perf_counter()
        self.head.to(next(model.parameters()).device)
        if self.score == "da2k":
            result = evaluate_da2k(model, self.dataset, head=self.head, short_side=self.short_side, progress=False)
            value = result["accuracy"]
        else:
            result = evaluate_depth(model, self.dataset, head=self.head, short_side=self.short_side, progress=False)
            value = result["delta1"] if self.score == "delta1" else -result["abs_rel"]
        self.last_seconds = time.perf_counter() - start
        self.last_result = result
        return float(value)
