"""Downstream scorers for the attention search: `scorer(model) -> float`, higher is better.

Each scorer holds a head fitted on the teacher (a linear segmentation or classification probe, or the teacher's DPT
depth head or YOLOS detection heads) and a fixed held-out subset, applies the head to the candidate's features, and
returns one number.
`.name` says what the number is; `.last_seconds` and `.last_result` record the most recent call, so the search can
report its cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from jetvit.heads import DPTHead, LinearClsHead, LinearSegHead
from jetvit.tasks.classification import evaluate_classification
from jetvit.tasks.depth import evaluate_da2k, evaluate_depth
from jetvit.tasks.detection import MAX_SIDE, SHORT_SIDE, evaluate_detection
from jetvit.tasks.segmentation import evaluate_segmentation


def fixed_subset(dataset: Dataset, size: int | None, *, seed: int = 0) -> Dataset:
    """The same `size` samples of `dataset` on every call (seeded, sorted indices); all of it when size is None."""
    n = len(dataset)
    if size is None or size >= n:
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return Subset(dataset, sorted(random.Random(seed).sample(range(n), size)))


class HeadScorer:
    """What every scorer shares: a head fitted on the teacher, evaluated on a fixed subset of `dataset`; calling it
    on a model moves the head to the model's device, times `_evaluate` and records its result. Subclasses give
    `_evaluate(model) -> (result dict, the score)`."""

    name: str

    def __init__(self, head: nn.Module, dataset: Dataset, *, size: int | None, seed: int) -> None:
        self.head = head.eval()
        self.dataset = fixed_subset(dataset, size, seed=seed)
        self.last_seconds: float | None = None
        self.last_result: dict[str, Any] | None = None

    def _evaluate(self, model: nn.Module) -> tuple[dict[str, Any], float]:
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> float:
        start = time.perf_counter()
        self.head.to(next(model.parameters()).device)
        result, value = self._evaluate(model)
        self.last_seconds = time.perf_counter() - start
        self.last_result = result
        return float(value)


class SegmentationScorer(HeadScorer):
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
        super().__init__(head, dataset, size=size, seed=seed)
        self.options = {"short_side": short_side, "crop": crop, "stride": stride, "layer": layer}

    def _evaluate(self, model: nn.Module) -> tuple[dict[str, Any], float]:
        result = evaluate_segmentation(model, self.head, self.dataset, progress=False, **self.options)
        return result, result["miou"]


class ClassificationScorer(HeadScorer):
    """Top-1 accuracy (in [0, 1]) of a linear probe trained on the teacher, applied to a candidate's features on a
    fixed subset (centre crops)."""

    name = "top1"

    def __init__(
        self,
        head: LinearClsHead,
        dataset: Dataset,
        *,
        size: int | None = None,
        seed: int = 0,
        short_side: int = 256,
        crop: int = 224,
        batch_size: int = 64,
    ) -> None:
        super().__init__(head, dataset, size=size, seed=seed)
        self.options = {"short_side": short_side, "crop": crop, "batch_size": batch_size}

    def _evaluate(self, model: nn.Module) -> tuple[dict[str, Any], float]:
        result = evaluate_classification(model, self.head, self.dataset, progress=False, **self.options)
        return result, result["top1"]


DEPTH_SCORES = ("delta1", "neg_abs_rel", "da2k")


class DepthScorer(HeadScorer):
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
        super().__init__(head, dataset, size=size, seed=seed)
        self.score = score
        self.name = score
        self.short_side = short_side

    def _evaluate(self, model: nn.Module) -> tuple[dict[str, Any], float]:
        if self.score == "da2k":
            result = evaluate_da2k(model, self.dataset, head=self.head, short_side=self.short_side, progress=False)
            return result, result["accuracy"]
        result = evaluate_depth(model, self.dataset, head=self.head, short_side=self.short_side, progress=False)
        return result, result["delta1"] if self.score == "delta1" else -result["abs_rel"]


DETECTION_SCORES = ("map", "ap50", "ap75")


class DetectionScorer(HeadScorer):
    """COCO box AP (in [0, 1]) of the teacher's YOLOS heads on a candidate's final detection tokens, on a fixed subset
    of a COCO-format set. score: "map" (AP over IoU .50:.95), "ap50" or "ap75"."""

    def __init__(
        self,
        head: nn.Module,
        dataset: Dataset,
        *,
        score: str = "map",
        size: int | None = None,
        seed: int = 0,
        short_side: int = SHORT_SIDE,
        max_side: int = MAX_SIDE,
        label_map: dict[int, int] | None = None,
    ) -> None:
        if score not in DETECTION_SCORES:
            raise ValueError(f"detection score must be one of {DETECTION_SCORES}, got {score!r}")
        super().__init__(head, dataset, size=size, seed=seed)
        self.name = score
        self.options = {"short_side": short_side, "max_side": max_side, "label_map": label_map}

    def _evaluate(self, model: nn.Module) -> tuple[dict[str, Any], float]:
        result = evaluate_detection(model, self.dataset, head=self.head, progress=False, **self.options)
        return result, result[self.name]


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
    split: str = "val",
    num_classes: int | None = None,
    head: str | None = None,
    train_split: str = "train",
    probe: dict[str, Any] | None = None,
    size: int | None = 16,
    seed: int = 0,
    short_side: int | None = None,
    crop: int | None = None,
    stride: int | None = None,
) -> SegmentationScorer:
    """A `SegmentationScorer` from config options. head: a probe written by `jetvit probe`; without one, a probe is
    trained on the teacher here (on `train_split`, recipe `probe`: `ProbeConfig` fields). The evaluation subset is
    `size` images of `split`, fixed by `seed`; windows default to the probe's."""
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.segmentation import ProbeConfig, load_probe, train_probe

    val = build_segmentation_dataset(dataset, data, split=split, num_classes=num_classes)

    def fit(recipe: ProbeConfig) -> LinearSegHead:
        train = build_segmentation_dataset(dataset, data, split=train_split, num_classes=num_classes)
        return train_probe(teacher, train, recipe, num_classes=train.num_classes, progress=False)

    seg_head, recipe = _probe_head(head, probe, load=load_probe, recipe_type=ProbeConfig, fit=fit)
    if seg_head.cfg.num_classes != val.num_classes:
        raise ValueError(f"the probe predicts {seg_head.cfg.num_classes} classes, {dataset} has {val.num_classes}")
    return SegmentationScorer(
        seg_head,
        val,
        size=size,
        seed=seed,
        short_side=short_side or recipe.eval_short_side,
        crop=crop or recipe.eval_crop,
        stride=stride or recipe.eval_stride,
        layer=recipe.layer,
    )


def classification_scorer(
    *,
    teacher: nn.Module,
    data: str,
    split: str = "val",
    head: str | None = None,
    train_split: str = "train",
    probe: dict[str, Any] | None = None,
    size: int | None = 256,
    seed: int = 0,
    short_side: int | None = None,
    crop: int | None = None,
    batch_size: int | None = None,
) -> ClassificationScorer:
    """A `ClassificationScorer` on an image folder (`data/{split}/{class}/*`). head: a probe written by
    `jetvit probe --task cls`; without one, a probe is trained on the teacher here (on `train_split`, recipe `probe`:
    `ClsProbeConfig` fields). The evaluation subset is `size` images of `split`, fixed by `seed`; the centre crop
    defaults to the probe's."""
    from jetvit.tasks.classification import ClsProbeConfig, load_cls_probe, train_cls_probe
    from jetvit.tasks.datasets import ImageFolderClassification

    val = ImageFolderClassification(data, split=split)

    def fit(recipe: ClsProbeConfig) -> LinearClsHead:
        train = ImageFolderClassification(data, split=train_split)
        return train_cls_probe(teacher, train, recipe, num_classes=train.num_classes, progress=False)

    cls_head, recipe = _probe_head(head, probe, load=load_cls_probe, recipe_type=ClsProbeConfig, fit=fit)
    if cls_head.cfg.num_classes != val.num_classes:
        raise ValueError(f"the probe predicts {cls_head.cfg.num_classes} classes, {data}/{split} has {val.num_classes}")
    return ClassificationScorer(
        cls_head,
        val,
        size=size,
        seed=seed,
        short_side=short_side or recipe.eval_short_side,
        crop=crop or recipe.eval_crop,
        batch_size=batch_size or recipe.eval_batch_size,
    )


def depth_scorer(
    *,
    teacher: nn.Module,
    data: str,
    dataset: str = "folder",
    score: str | None = None,
    size: int | None = 16,
    seed: int = 0,
    short_side: int = 518,
    depth_scale: float = 1000.0,
    annotations: str = "annotations.json",
) -> DepthScorer:
    """A `DepthScorer` with the teacher's DPT head. dataset: "folder" (depth maps; score delta1 or neg_abs_rel,
    default delta1) or "da2k" (score da2k)."""
    from jetvit.tasks.datasets import DA2K, DepthFolder

    if getattr(teacher, "depth_head", None) is None:
        raise ValueError("the depth scorer needs a teacher with a DPT head (a Depth-Anything-V2 teacher)")
    if dataset == "da2k":
        subset, score = DA2K(data, annotations=annotations), score or "da2k"
    elif dataset == "folder":
        subset, score = DepthFolder(data, depth_scale=depth_scale), score or "delta1"
    else:
        raise ValueError(f"depth scorer dataset must be 'folder' or 'da2k', got {dataset!r}")
    if (score == "da2k") != (dataset == "da2k"):
        raise ValueError(f"score {score!r} does not fit dataset {dataset!r}")
    return DepthScorer(teacher.depth_head, subset, score=score, size=size, seed=seed, short_side=short_side)


def detection_scorer(
    *,
    teacher: nn.Module,
    data: str,
    split: str = "val2017",
    score: str = "map",
    size: int | None = 64,
    seed: int = 0,
    short_side: int = SHORT_SIDE,
    max_side: int = MAX_SIDE,
    label_map: dict[int, int] | str | None = None,
) -> DetectionScorer:
    """A `DetectionScorer` with the teacher's YOLOS heads on a COCO-format set
    (`data/annotations/instances_{split}.json` and `data/{split}/`). The evaluation subset is `size` images, fixed by
    `seed`; images are resized as YOLOS evaluates (`short_side`, `max_side`). label_map: {label index: category id}
    or a JSON file of it; default: by the teacher's label names, else label index == category id
    (`jetvit.tasks.detection.label_to_category`)."""
    from jetvit.tasks.datasets import CocoDetection, coco_layout
    from jetvit.tasks.detection import label_to_category, read_label_map
    from jetvit.tasks.metrics import import_pycocotools

    head = getattr(teacher, "detection_head", None)
    if head is None:
        raise ValueError("the detection scorer needs a teacher with detection heads (a YOLOS object-detection model)")
    import_pycocotools()
    dataset = CocoDetection(*coco_layout(data, split))
    if not dataset.ground_truth["annotations"]:
        raise ValueError(f"{dataset.annotation_file} holds no annotations: there is nothing to detect")
    if isinstance(label_map, str):
        label_map = read_label_map(label_map)
    elif label_map is not None:
        label_map = {int(k): int(v) for k, v in label_map.items()}
    label_to_category(head, dataset.categories, label_map)  # a mapping that cannot work fails before the search
    return DetectionScorer(
        head,
        dataset,
        score=score,
        size=size,
        seed=seed,
        short_side=short_side,
        max_side=max_side,
        label_map=label_map,
    )
