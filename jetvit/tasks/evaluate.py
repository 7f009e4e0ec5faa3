"""One evaluation per task, shared by `jetvit eval` (and `jetvit probe`) and the search's downstream scorers.

An `Evaluation` is a head, the dataset it is scored on and the options of the task's protocol, resolved once from
what a user gives: a probe and the recipe it was trained with, a dataset root, overrides. Called on a model it
returns every metric of the task (the dict of the task module's `evaluate_*`). `jetvit eval` calls it on the teacher
and on the hybrid and prints the metrics as a table; a scorer (`jetvit.tasks.scorers`) calls it on each candidate of
the search, on a fixed subset, and keeps one of them (`Evaluation.score`).

- seg: `SegmentationEval` (Cityscapes, ADE20K, segmentation folders); windows and layer from the probe's recipe
  (`ProbeConfig`);
- cls, video: `ClassificationEval` (image folders, folders of clips); resize, crop, batch from `ClsProbeConfig`;
- depth: `DepthEval` (depth folders) and `DA2KEval` (DA2K pairs), the other defaults in `jetvit.tasks.config`;
- det: `DetectionEval` (COCO-format sets).

The builders (`SegmentationEval.from_probe`, `ClassificationEval.from_probe`, `depth_evaluation`,
`detection_evaluation`) take None for an option not given, so that each default keeps its one home.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import nn

from jetvit.heads import DPTHead, LinearClsHead, LinearSegHead
from jetvit.tasks.classification import evaluate_classification
from jetvit.tasks.common import model_device
from jetvit.tasks.config import (
    DEPTH_SHORT_SIDE,
    DET_MAX_SIDE,
    DET_SHORT_SIDE,
    MAX_DEPTH,
    MIN_DEPTH,
    SPLITS,
    ClsProbeConfig,
    ProbeConfig,
)
from jetvit.tasks.depth import evaluate_da2k, evaluate_depth
from jetvit.tasks.detection import evaluate_detection, label_to_category, read_label_map
from jetvit.tasks.metrics import Align
from jetvit.tasks.segmentation import evaluate_segmentation

E = TypeVar("E", bound="Evaluation")
OnPrediction = Callable[..., None]


def given(**options: Any) -> dict[str, Any]:
    """The options that were given (not None): the others keep their defaults."""
    return {k: v for k, v in options.items() if v is not None}


@dataclass(frozen=True, eq=False, kw_only=True)
class Evaluation:
    """A task's evaluation: `head` on a model's features, over `dataset`. A subclass names the task module's
    `evaluate` function (`evaluate(model, head=, dataset=, progress=, **options)`); its other fields are the options,
    passed by name. `kind` names the metrics (the rows of `jetvit eval`'s table), `scores` the ones a scorer may keep
    (higher is better)."""

    head: nn.Module
    dataset: Any
    kind: ClassVar[str]
    scores: ClassVar[tuple[str, ...]]
    evaluate: ClassVar[Callable[..., dict[str, Any]]]

    def on(self: E, dataset: Any) -> E:
        """The same evaluation over another dataset (a subset of this one)."""
        return dataclasses.replace(self, dataset=dataset)

    def with_head(self: E, head: nn.Module) -> E:
        """The same evaluation with another head of the same kind (a model's own DPT or YOLOS heads)."""
        return dataclasses.replace(self, head=head)

    def check(self, model: nn.Module, name: str = "model") -> None:
        """ValueError when the head cannot read `model`'s features; `name` names the model in the message."""
        in_dim = getattr(self.head.cfg, "in_dim", None)  # the YOLOS heads do not record theirs
        if in_dim is not None and in_dim != model.cfg.dim:
            raise ValueError(f"the head reads {in_dim}-dim features but the {name} has width {model.cfg.dim}")

    def __call__(
        self, model: nn.Module, *, progress: bool = False, on_prediction: OnPrediction | None = None
    ) -> dict[str, Any]:
        """Every metric of `model` (with the head moved to its device) over the dataset, plus "seconds".
        on_prediction(index, image, target, prediction) is called per image (not for classification, which runs
        in batches)."""
        self.check(model)
        self.head.to(model_device(model))
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("head", "dataset")}
        hooks = given(on_prediction=on_prediction)
        return self.evaluate(model, head=self.head, dataset=self.dataset, progress=progress, **options, **hooks)

    def score(self, result: dict[str, Any], name: str) -> float:
        """The score `name` (one of `scores`) of a result of this evaluation."""
        return float(result[name])


@dataclass(frozen=True, eq=False, kw_only=True)
class ProbeEval(Evaluation):
    """The evaluation of a linear probe: its options are by default those of the recipe it was trained with."""

    recipe_type: ClassVar[type]
    from_recipe: ClassVar[dict[str, str]]  # option -> the recipe's field

    @classmethod
    def from_probe(cls: type[E], head: nn.Module, dataset: Any, recipe: Any = None, **options: Any) -> E:
        """The evaluation of `head` (trained by `recipe`, default the recipe type's defaults) over `dataset`;
        `options` given (not None) replace the recipe's. ValueError when the head and the dataset disagree on the
        number of classes."""
        classes = getattr(dataset, "num_classes", head.cfg.num_classes)  # a plain list of samples says nothing
        if classes != head.cfg.num_classes:
            raise ValueError(f"the probe predicts {head.cfg.num_classes} classes, the dataset has {classes}")
        recipe = recipe or cls.recipe_type()
        defaults = {option: getattr(recipe, name) for option, name in cls.from_recipe.items()}
        return cls(head=head, dataset=dataset, **{**defaults, **given(**options)})


@dataclass(frozen=True, eq=False, kw_only=True)
class SegmentationEval(ProbeEval):
    """mIoU and pixel accuracy of a linear probe (`jetvit probe`) on a model's patch features of block `layer`:
    each image resized to `short_side`, logits averaged over sliding windows of side `crop` every `stride`."""

    head: LinearSegHead
    short_side: int
    crop: int
    stride: int
    layer: int
    kind = "seg"
    scores = ("miou",)
    evaluate = staticmethod(evaluate_segmentation)
    recipe_type = ProbeConfig
    from_recipe = {"short_side": "eval_short_side", "crop": "eval_crop", "stride": "eval_stride", "layer": "layer"}


@dataclass(frozen=True, eq=False, kw_only=True)
class ClassificationEval(ProbeEval):
    """Top-1 and top-5 accuracy of a linear classification probe (`jetvit probe --task cls|video`) on a model's CLS
    tokens: centre crops of side `crop` of images resized to `short_side`, in batches; with `clips`, per clip, each
    clip's features the mean of its frames'."""

    head: LinearClsHead
    short_side: int
    crop: int
    batch_size: int
    num_workers: int = 0
    clips: bool = False
    scores = ("top1",)
    evaluate = staticmethod(evaluate_classification)
    recipe_type = ClsProbeConfig
    from_recipe = {"short_side": "eval_short_side", "crop": "eval_crop", "batch_size": "eval_batch_size"}

    @property
    def kind(self) -> str:
        return "video" if self.clips else "cls"


@dataclass(frozen=True, eq=False, kw_only=True)
class DepthEval(Evaluation):
    """AbsRel and delta1 of a DPT head on a model's intermediates over a depth folder; relative heads are aligned
    (`align`, default by the head: disparity for relative heads, none for metric ones)."""

    head: DPTHead
    short_side: int = DEPTH_SHORT_SIDE
    align: Align | None = None
    min_depth: float = MIN_DEPTH
    max_depth: float = MAX_DEPTH
    kind = "depth"
    scores = ("delta1", "neg_abs_rel")
    evaluate = staticmethod(evaluate_depth)

    def score(self, result: dict[str, Any], name: str) -> float:
        return -float(result["abs_rel"]) if name == "neg_abs_rel" else float(result[name])


@dataclass(frozen=True, eq=False, kw_only=True)
class DA2KEval(Evaluation):
    """DA2K pair-ordering accuracy of a DPT head on a model's intermediates."""

    head: DPTHead
    short_side: int = DEPTH_SHORT_SIDE
    kind = "da2k"
    scores = ("da2k",)
    evaluate = staticmethod(evaluate_da2k)

    def score(self, result: dict[str, Any], name: str) -> float:
        return float(result["accuracy"])


def depth_evaluation(
    head: DPTHead,
    *,
    data: str | Path,
    dataset: str = "folder",
    short_side: int | None = None,
    depth_scale: float | None = None,
    annotations: str | None = None,
    align: Align | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> DepthEval | DA2KEval:
    """`head`'s evaluation on the depth data at `data`: dataset "folder" (depth maps, 16-bit PNGs of `depth_scale`
    per metre) or "da2k" (pairs listed in `annotations`, relative to `data`)."""
    from jetvit.tasks.datasets import DA2K, DepthFolder

    if dataset == "da2k":
        pairs = DA2K(data, **given(annotations=annotations))
        return DA2KEval(head=head, dataset=pairs, **given(short_side=short_side))
    if dataset == "folder":
        maps = DepthFolder(data, **given(depth_scale=depth_scale))
        options = given(short_side=short_side, align=align, min_depth=min_depth, max_depth=max_depth)
        return DepthEval(head=head, dataset=maps, **options)
    raise ValueError(f"depth dataset must be 'folder' or 'da2k', got {dataset!r}")


@dataclass(frozen=True, eq=False, kw_only=True)
class DetectionEval(Evaluation):
    """COCO box AP and AR of YOLOS class and box heads on a model's final detection tokens; images resized as YOLOS
    evaluates (short side `short_side`, long side at most `max_side`). label_map: {label index: COCO category id},
    default by the head's label names, else the identity (`jetvit.tasks.detection.label_to_category`)."""

    short_side: int = DET_SHORT_SIDE
    max_side: int = DET_MAX_SIDE
    label_map: dict[int, int] | None = None
    kind = "det"
    scores = ("map", "ap50", "ap75")
    evaluate = staticmethod(evaluate_detection)


def detection_evaluation(
    head: nn.Module,
    *,
    data: str | Path,
    split: str | None = None,
    short_side: int | None = None,
    max_side: int | None = None,
    label_map: dict[int, int] | str | None = None,
) -> DetectionEval:
    """`head`'s evaluation on a COCO-format set (`data/annotations/instances_{split}.json` and `data/{split}/`,
    split default val2017). label_map: {label index: category id} or a JSON file of it; a mapping that cannot work
    fails here, before any model runs."""
    from jetvit.tasks.datasets import CocoDetection, coco_layout
    from jetvit.tasks.metrics import import_pycocotools

    import_pycocotools()
    dataset = CocoDetection(*coco_layout(data, split or SPLITS["coco"][1]))
    if not dataset.ground_truth["annotations"]:
        raise ValueError(f"{dataset.annotation_file} holds no annotations: there is nothing to detect")
    if isinstance(label_map, str):
        label_map = read_label_map(label_map)
    elif label_map is not None:
        label_map = {int(k): int(v) for k, v in label_map.items()}
    label_to_category(head, dataset.categories, label_map)
    return DetectionEval(
        head=head, dataset=dataset, label_map=label_map, **given(short_side=short_side, max_side=max_side)
    )


def carried_heads(models: dict[str, nn.Module], attr: str, what: str) -> dict[str, nn.Module]:
    """Each model's own head `attr` (a DPT or YOLOS head saved with it, as a converted hybrid inherits its
    teacher's), else the teacher's (`models["teacher"]`). `what` names the head in the error when there is none."""
    fallback = getattr(models.get("teacher"), attr, None)
    heads = {}
    for name, model in models.items():
        own = getattr(model, attr, None)
        heads[name] = own if own is not None else fallback
        if heads[name] is None:
            raise ValueError(f"the {name} has no {what} head and no teacher with one was given (--teacher)")
    return heads
