"""Sliding windows, probe augmentation, probe training/evaluation on a tiny model, probe save/load."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from jetvit.tasks.datasets import IGNORE
from jetvit.tasks.segmentation import (
    ProbeConfig,
    evaluate_segmentation,
    load_probe,
    random_scale_crop,
    save_probe,
    slide_inference,
    train_probe,
    window_starts,
)

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------------------ sliding windows


def test_window_starts_cover_and_end_at_the_border() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(3, 4, 3) == [0]


def test_slide_inference_of_a_pointwise_fn_equals_the_full_image() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 3, generator=g)

    def pointwise(x: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, 5, h, w)
        return torch.einsum("bchw,kc->bkhw", x, weight)

    for size in [(23, 37), (9, 6), (16, 8)]:  # larger than, smaller than, equal to a crop side
        image = torch.randn(2, 3, *size, generator=g)
        out = slide_inference(pointwise, image, crop=(16, 8), stride=(11, 5), num_classes=5)
        assert out.shape == (2, 5, *size)
        torch.testing.assert_close(out, pointwise(image))


def test_slide_inference_averages_overlaps() -> None:
    calls: list[int] = []

    def constant(x: torch.Tensor) -> torch.Tensor:  # the k-th window predicts k everywhere
        calls.append(1)
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float(len(calls)))

    out = slide_inference(constant, torch.zeros(1, 3, 1, 5), crop=(1, 3), stride=(1, 2), num_classes=1)
    assert out[0, 0, 0].tolist() == [1.0, 1.0, 1.5, 2.0, 2.0]  # windows [0, 3) and [2, 5) overlap at x = 2


def test_slide_inference_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="stride"):
        slide_inference(lambda x: x, torch.zeros(1, 3, 8, 8), crop=4, stride=5, num_classes=3)
    with pytest.raises(ValueError, match=r"expected \(1, 2, 4, 4\)"):
        slide_inference(lambda x: x, torch.zeros(1, 3, 8, 8), crop=4, stride=4, num_classes=2)


# ------------------------------------------------------------------------------------------------ augmentation


def test_random_scale_crop_keeps_image_and_label_aligned() -> None:
    label = torch.randint(0, 5, (12, 20))
    image = torch.stack([label.float() / 10, torch.zeros(12, 20), torch.ones(12, 20)])
    rng = random.Random(0)
    for _ in range(10):
        img, lab = random_scale_crop(image, label, crop=12, scale=(1.0, 1.0), rng=rng)
        assert img.shape == (3, 12, 12) and lab.shape == (12, 12)
        torch.testing.assert_close(img[0] * 10, lab.float())
    # Shrunk samples are padded with the ignore label; labels stay labels (nearest resampling).
    img, lab = random_scale_crop(image, label, crop=12, scale=(0.5, 0.5), rng=rng)
    assert (lab == IGNORE).any() and set(lab.unique().tolist()) <= set(range(5)) | {IGNORE}
    assert (img[:, lab == IGNORE] == 0).all()


# ------------------------------------------------------------------------------------------------ probe


class Quadrants(torch.utils.data.Dataset):
    """Images whose class is the colour of each 8x8 patch: learnable by a linear probe on patch features."""

    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def __init__(self, n: int, size: tuple[int, int] = (32, 48)) -> None:
        g = torch.Generator().manual_seed(n)
        self.labels = [torch.randint(0, 3, (size[0] // 8, size[1] // 8), generator=g) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = self.labels[i].repeat_interleave(8, 0).repeat_interleave(8, 1)  # (H, W)
        return self.colours[label].permute(2, 0, 1).clone(), label


def test_probe_learns_a_linearly_separable_task_and_round_trips(tiny_model, tmp_path: Path) -> None:
    model = tiny_model(depth=2)
    data = Quadrants(6)
    cfg = ProbeConfig(iterations=60, batch_size=4, crop=32, scale_min=1.0, scale_max=1.0, lr=1e-2, warmup=0)
    logs: list[dict] = []
    head = train_probe(model, data, cfg, num_classes=3, progress=False, log=logs.append)
    assert logs[0]["step"] == 0 and logs[-1]["step"] == cfg.iterations - 1
    assert logs[-1]["loss"] < logs[0]["loss"]
    result = evaluate_segmentation(model, head, Quadrants(2), short_side=32, crop=32, stride=16, progress=False)
    assert result["miou"] > 0.9
    assert len(result["per_class_iou"]) == 3 and result["seconds"] > 0

    save_probe(head, tmp_path / "probe", meta={"dataset": "quadrants", "miou": result["miou"]})
    loaded, meta = load_probe(tmp_path / "probe" / "head.safetensors")
    assert meta["dataset"] == "quadrants"
    x = torch.randn(1, 32, 4, 6)
    torch.testing.assert_close(loaded(x, (32, 48)), head(x, (32, 48)))
    with pytest.raises(FileNotFoundError, match="head.json"):
        load_probe(tmp_path)


def test_probe_evaluation_reads_its_options_from_the_recipe(tiny_model) -> None:
    """`SegmentationEval.from_probe` (what `jetvit eval` and the scorer build): windows and layer from the probe's
    recipe, a given option in their place; calling it is `evaluate_segmentation` with those options."""
    from types import SimpleNamespace

    from jetvit.heads import LinearSegConfig, LinearSegHead
    from jetvit.tasks.evaluate import SegmentationEval

    model = tiny_model(depth=2)
    torch.manual_seed(0)
    head = LinearSegHead(LinearSegConfig(in_dim=32, num_classes=3)).eval()
    recipe = ProbeConfig(eval_short_side=40, eval_crop=32, eval_stride=16, layer=0)
    evaluation = SegmentationEval.from_probe(head, Quadrants(2), recipe, stride=8)
    assert (evaluation.short_side, evaluation.crop, evaluation.stride, evaluation.layer) == (40, 32, 8, 0)
    direct = evaluate_segmentation(model, head, Quadrants(2), short_side=40, crop=32, stride=8, layer=0, progress=False)
    result = evaluation(model)
    assert (result["miou"], result["pixel_acc"]) == (direct["miou"], direct["pixel_acc"])
    assert SegmentationEval.from_probe(head, Quadrants(2)).crop == ProbeConfig().eval_crop
    with pytest.raises(ValueError, match="the probe predicts 3 classes, the dataset has 4"):
        SegmentationEval.from_probe(head, SimpleNamespace(num_classes=4))
    with pytest.raises(ValueError, match="the head reads 32-dim features but the model has width 16"):
        evaluation(tiny_model(depth=2, dim=16, mlp_hidden=32))


def test_probe_config_rejects_bad_values(tiny_model) -> None:
    with pytest.raises(ValueError, match="unknown probe config key.*bogus"):
        ProbeConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="eval_stride"):
        ProbeConfig(eval_crop=64, eval_stride=128)
    model = tiny_model(depth=2)
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        train_probe(model, Quadrants(1), ProbeConfig(iterations=1, crop=30), num_classes=3, progress=False)
