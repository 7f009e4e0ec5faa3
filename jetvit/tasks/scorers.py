"""Downstream scorers for the attention search: `scorer(model) -> float`, higher is better.

A scorer is one task's evaluation (`jetvit.tasks.evaluate`, the one `jetvit eval` runs) with a head fitted on the
teacher (a linear segmentation or classification probe, or the teacher's DPT depth head or YOLOS detection heads),
on a fixed held-out subset, reduced to one of its metrics. `.name` says what the number is; `.last_seconds` and
`.last_result` (every metric) record the most recent call, so the search can report its cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from jetvit.heads import DPTHead, LinearClsHead, LinearSegHead
from jetvit.tasks.config import SPLITS, ClsProbeConfig, ProbeConfig
from jetvit.tasks.evaluate import (
    ClassificationEval,
    DA2KEval,
    DepthEval,
    Evaluation,
    SegmentationEval,
    depth_evaluation,
    detection_evaluation,
    given,
)


def fixed_subset(dataset: Dataset, size: int | None, *, seed: int = 0) -> Dataset:
    """The same `size` samples of `dataset` on every call (seeded, sorted indices); all of it when size is None."""
    n = len(dataset)
    if size is None or size >= n:
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return Subset(dataset, sorted(random.Random(seed).sample(range(n), size)))


class TaskScorer:
    """`evaluation` on a fixed subset of its dataset (`size` samples drawn by `seed`), reduced to its score `score`
    (default the evaluation's first). Calling it on a model times the evaluation and records its result."""

    def __init__(self, evaluation: Evaluation, *, score: str | None = None, size: int | None, seed: int) -> None:
        score = score or evaluation.scores[0]
        if score not in evaluation.scores:
            raise ValueError(f"{evaluation.kind} score must be one of {evaluation.scores}, got {score!r}")
        self.name = score
        self.evaluation = evaluation.on(fixed_subset(evaluation.dataset, size, seed=seed))
        self.last_seconds: float | None = None
        self.last_result: dict[str, Any] | None = None

    @property
    def head(self) -> nn.Module:
        return self.evaluation.head

    @property
    def dataset(self) -> Dataset:
        return self.evaluation.dataset

    def __call__(self, model: nn.Module) -> float:
        start = time.perf_counter()
        result = self.evaluation(model)
        self.last_seconds = time.perf_counter() - start
        self.last_result = result
        return self.evaluation.score(result, self.name)


class SegmentationScorer(TaskScorer):
    """mIoU (in [0, 1]) of a probe trained on the teacher, applied to a candidate's features on a fixed subset;
    windows from the probe's `recipe` (default `ProbeConfig()`) unless given."""

    def __init__(
        self,
        head: LinearSegHead,
        dataset: Dataset,
        *,
        recipe: ProbeConfig | None = None,
        size: int | None = None,
        seed: int = 0,
        short_side: int | None = None,
        crop: int | None = None,
        stride: int | None = None,
    ) -> None:
        evaluation = SegmentationEval.from_probe(head, dataset, recipe, short_side=short_side, crop=crop, stride=stride)
        super().__init__(evaluation, size=size, seed=seed)


DEPTH_SCORES = DepthEval.scores + DA2KEval.scores


class DepthScorer(TaskScorer):
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
        short_side: int | None = None,
    ) -> None:
        if score not in DEPTH_SCORES:
            raise ValueError(f"depth score must be one of {DEPTH_SCORES}, got {score!r}")
        kind = DA2KEval if score in DA2KEval.scores else DepthEval
        evaluation = kind(head=head, dataset=dataset, **given(short_side=short_side))
        super().__init__(evaluation, score=score, size=size, seed=seed)


# --------------------------------------------------------------------------------------------------------------------
# Factories for the search config: `score.scorer: "jetvit.tasks.scorers:segmentation_scorer"`, `score.options: {...}`
# --------------------------------------------------------------------------------------------------------------------


def _probe_head(
    head: str | None, probe: dict[str, Any] | None, *, load: Callable, recipe_type: type, fit: Callable
) -> tuple[nn.Module, Any]:
    """A probe scorer's (head, recipe): the probe saved at `head` (`load`) and its recorded recipe, or, without one, a
    probe trained here by `fit(recipe)` on the recipe `probe` (fields of `recipe_type`)."""
    if head is not None:
        if probe:
            raise ValueError("score.options: give either head (a trained probe) or probe (a recipe to train one)")
        loaded, meta = load(head)
        return loaded, recipe_type.from_dict(meta.get("probe", {}))
    recipe = recipe_type.from_dict(probe or {})
    return fit(recipe), recipe


def segmentation_scorer(
    *,
    teacher: nn.Module,
    data: str,
    dataset: str = "folder",
    split: str | None = None,
    num_classes: int | None = None,
    head: str | None = None,
    train_split: str | None = None,
    probe: dict[str, Any] | None = None,
    size: int | None = 16,
    seed: int = 0,
    short_side: int | None = None,
    crop: int | None = None,
    stride: int | None = None,
) -> TaskScorer:
    """A segmentation scorer from config options. head: a probe written by `jetvit probe`; without one, a probe is
    trained on the teacher here (on `train_split`, recipe `probe`: `ProbeConfig` fields). The evaluation subset is
    `size` images of `split`, fixed by `seed`; splits default to the dataset's, windows to the probe's."""
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.segmentation import load_probe, train_probe

    val = build_segmentation_dataset(dataset, data, split=split, num_classes=num_classes)

    def fit(recipe: ProbeConfig) -> LinearSegHead:
        train = build_segmentation_dataset(
            dataset, data, split=train_split or SPLITS[dataset][0], num_classes=num_classes
        )
        return train_probe(teacher, train, recipe, num_classes=train.num_classes, progress=False)

    seg_head, recipe = _probe_head(head, probe, load=load_probe, recipe_type=ProbeConfig, fit=fit)
    evaluation = SegmentationEval.from_probe(seg_head, val, recipe, short_side=short_side, crop=crop, stride=stride)
    return TaskScorer(evaluation, size=size, seed=seed)


def classification_scorer(
    *,
    teacher: nn.Module,
    data: str,
    split: str | None = None,
    head: str | None = None,
    train_split: str | None = None,
    probe: dict[str, Any] | None = None,
    size: int | None = 256,
    seed: int = 0,
    short_side: int | None = None,
    crop: int | None = None,
    batch_size: int | None = None,
) -> TaskScorer:
    """A classification scorer on an image folder (`data/{split}/{class}/*`). head: a probe written by
    `jetvit probe --task cls`; without one, a probe is trained on the teacher here (on `train_split`, recipe `probe`:
    `ClsProbeConfig` fields). The evaluation subset is `size` images of `split`, fixed by `seed`; the centre crop
    defaults to the probe's."""
    from jetvit.tasks.classification import load_cls_probe, train_cls_probe
    from jetvit.tasks.datasets import build_classification_dataset

    val = build_classification_dataset(data, split=split)

    def fit(recipe: ClsProbeConfig) -> LinearClsHead:
        train = build_classification_dataset(data, split=train_split or SPLITS["folder"][0])
        return train_cls_probe(teacher, train, recipe, num_classes=train.num_classes, progress=False)

    cls_head, recipe = _probe_head(head, probe, load=load_cls_probe, recipe_type=ClsProbeConfig, fit=fit)
    evaluation = ClassificationEval.from_probe(
        cls_head, val, recipe, short_side=short_side, crop=crop, batch_size=batch_size
    )
    return TaskScorer(evaluation, size=size, seed=seed)


def depth_scorer(
    *,
    teacher: nn.Module,
    data: str,
    dataset: str = "folder",
    score: str | None = None,
    size: int | None = 16,
    seed: int = 0,
    short_side: int | None = None,
    depth_scale: float | None = None,
    annotations: str | None = None,
) -> TaskScorer:
    """A depth scorer with the teacher's DPT head. dataset: "folder" (depth maps; score delta1 or neg_abs_rel,
    default delta1) or "da2k" (score da2k)."""
    if getattr(teacher, "depth_head", None) is None:
        raise ValueError("the depth scorer needs a teacher with a DPT head (a Depth-Anything-V2 teacher)")
    evaluation = depth_evaluation(
        teacher.depth_head,
        data=data,
        dataset=dataset,
        short_side=short_side,
        depth_scale=depth_scale,
        annotations=annotations,
    )
    if score is not None and score not in evaluation.scores:
        raise ValueError(f"score {score!r} does not fit dataset {dataset!r}; accepted: {evaluation.scores}")
    return TaskScorer(evaluation, score=score, size=size, seed=seed)


def detection_scorer(
    *,
    teacher: nn.Module,
    data: str,
    split: str | None = None,
    score: str = "map",
    size: int | None = 64,
    seed: int = 0,
    short_side: int | None = None,
    max_side: int | None = None,
    label_map: dict[int, int] | str | None = None,
) -> TaskScorer:
    """A detection scorer with the teacher's YOLOS heads on a COCO-format set (`data/annotations/instances_{split}.json`
    and `data/{split}/`, split default val2017). The evaluation subset is `size` images, fixed by `seed`; images are
    resized as YOLOS evaluates (`short_side`, `max_side`). label_map: {label index: category id} or a JSON file of
    it; default: by the teacher's label names, else label index == category id
    (`jetvit.tasks.detection.label_to_category`)."""
    head = getattr(teacher, "detection_head", None)
    if head is None:
        raise ValueError("the detection scorer needs a teacher with detection heads (a YOLOS object-detection model)")
    evaluation = detection_evaluation(
        head, data=data, split=split, short_side=short_side, max_side=max_side, label_map=label_map
    )
    return TaskScorer(evaluation, score=score, size=size, seed=seed)
