"""What the tasks are configured by: the linear probes' recipes and the defaults of each evaluation protocol.

Each default has its home here and only here: the datasets, the evaluations (`jetvit.tasks.evaluate`), the search's
scorers and the command line (`jetvit probe`, `jetvit eval`) all read it from this module. It is light (no torch), so
that the command line builds its options and their help from these fields and constants while it parses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from jetvit._config import from_dict

# (train split, validation split) of each dataset layout.
SPLITS = {
    "cityscapes": ("train", "val"),
    "ade20k": ("training", "validation"),
    "folder": ("train", "val"),
    "coco": ("train2017", "val2017"),
}
FRAMES = 8  # frames per video clip, evenly spaced
DEPTH_SHORT_SIDE = 518  # Depth-Anything-V2's inference short side
DEPTH_SCALE = 1000.0  # 16-bit PNG depth value per metre (millimetres)
MIN_DEPTH, MAX_DEPTH = 1e-3, math.inf  # the ground truth that counts
DA2K_ANNOTATIONS = "annotations.json"
DET_SHORT_SIDE, DET_MAX_SIDE = 800, 1333  # YOLOS-Base's COCO evaluation size (DETR's)

OPTIMIZERS = ("sgd", "adamw")  # of the classification probe

R = TypeVar("R", bound="Recipe")


class Recipe:
    """What the probe recipes share: fields that must be positive, and strict construction from plain data."""

    positive: ClassVar[tuple[str, ...]]
    what: ClassVar[str]  # names the recipe in errors

    def __post_init__(self) -> None:
        for name in self.positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{self.what} {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        """Build from a dict (a probe's saved recipe, or `score.options`); unknown keys and wrong types are errors."""
        return from_dict(cls, d, f"{cls.what} config")


@dataclass
class ProbeConfig(Recipe):
    """Linear segmentation probe recipe; defaults follow DINOv3's ADE20K linear evaluation (40k iterations of 512
    crops)."""

    iterations: int = 40000
    batch_size: int = 16
    crop: int = 512  # training crop side (a patch multiple)
    scale_min: float = 0.5
    scale_max: float = 2.0
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup: int = 1500
    dropout: float = 0.1
    layer: int = -1  # block whose normed patch features the probe reads
    eval_short_side: int = 512  # images are resized to this short side before sliding windows
    eval_crop: int = 512  # sliding-window side
    eval_stride: int = 341  # sliding-window stride
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50

    positive = ("iterations", "batch_size", "crop", "eval_short_side", "eval_crop", "eval_stride")
    what = "probe"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"probe scale range must satisfy 0 < min <= max, got {self.scale_min}..{self.scale_max}")
        if self.eval_stride > self.eval_crop:
            raise ValueError(f"eval_stride {self.eval_stride} exceeds eval_crop {self.eval_crop}")


@dataclass
class ClsProbeConfig(Recipe):
    """Linear classification probe recipe; defaults follow DINO v1's ViT-B/16 linear evaluation (SGD, 1 block +
    avgpool, 224 crops) for a number of iterations instead of 100 ImageNet epochs."""

    iterations: int = 10000
    batch_size: int = 256
    crop: int = 224  # training crop side (a patch multiple)
    scale_min: float = 0.08  # random-resized-crop area range
    scale_max: float = 1.0
    optimizer: str = "sgd"  # sgd (DINO's) or adamw
    lr: float = 0.001  # DINO: 0.001 * batch / 256
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    warmup: int = 0
    n_last_blocks: int = 1  # concatenate the CLS tokens of this many last blocks (DINO: 4 for ViT-S, 1 for ViT-B)
    avgpool: bool = True  # append the last block's mean patch token (DINO: ViT-B)
    eval_short_side: int = 256  # images are resized to this short side, then centre-cropped
    eval_crop: int = 224
    eval_batch_size: int = 64
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50

    positive = ("iterations", "batch_size", "crop", "n_last_blocks", "eval_short_side", "eval_crop", "eval_batch_size")
    what = "classification probe"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.scale_min <= self.scale_max <= 1:
            raise ValueError(
                f"crop scale range must satisfy 0 < min <= max <= 1, got {self.scale_min}..{self.scale_max}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"classification probe optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.eval_crop > self.eval_short_side:
            raise ValueError(f"eval_crop {self.eval_crop} exceeds eval_short_side {self.eval_short_side}")
