"""Downstream scorer of the built-in task for the search: `score.scorer: "jetvit.demo.scoring:keyshapes_miou"`.

As the paper scores DINOv3 candidates by the mIoU of the teacher's linear head on their last-block features, this
applies the built-in teacher's segmentation head to a candidate's features on a fixed set of `keyshapes` validation
samples at the native resolution, and returns the mIoU in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch

from jetvit.demo.teacher import ASSET_DIR
from jetvit.tasks import synthetic


def keyshapes_miou(
    *,
    teacher: torch.nn.Module,
    device: torch.device | str = "cpu",
    images: torch.Tensor | None = None,
    targets: list[int] | None = None,
    head: str | None = None,
    samples: int = 64,
    offset: int = 0,
    size: int = synthetic.NATIVE_SIZE,
    seed: int = 0,
):
    """A `jetvit.tasks.scorers.SegmentationScorer` on `keyshapes` val samples [offset, offset + samples).

    images, targets: the search's held-out images and distillation blocks, unused: this scorer has its own data.
    head: the teacher's `seg_head/` directory (default: the one next to the built-in teacher). The search scores on
    a different slice of the validation split (`offset`) than the final evaluation, if the config asks for it.
    """
    from torch.utils.data import Subset

    from jetvit.tasks.scorers import SegmentationScorer
    from jetvit.tasks.segmentation import load_probe

    head_dir = Path(head) if head is not None else ASSET_DIR / "seg_head"
    seg_head, _ = load_probe(head_dir)
    seg_head.to(device)
    if seg_head.cfg.in_dim != teacher.cfg.dim:
        raise ValueError(f"head {head_dir} reads {seg_head.cfg.in_dim}-dim features, the teacher has {teacher.cfg.dim}")
    data = synthetic.KeyShapes(split="val", length=offset + samples, size=size, seed=seed, target="seg")
    data = Subset(data, range(offset, offset + samples))
    return SegmentationScorer(seg_head, data, short_side=size, crop=size, stride=size)
