"""Depth evaluation and downstream scorers on a tiny Depth-Anything-style hybrid with a random DPT head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jetvit
from jetvit.tasks.datasets import DA2K, DepthFolder
from jetvit.tasks.depth import evaluate_da2k, evaluate_depth, predict_depth
from jetvit.tasks.scorers import DepthScorer, SegmentationScorer, fixed_subset

torch.set_num_threads(1)
SHORT = 32  # inference short side: a multiple of the patch, so images of that size are not resized


def write_images(root: Path, n: int, size: tuple[int, int] = (SHORT, 48)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")


def test_depth_head_on_all_full_hybrid_equals_teacher(tiny_depth_model) -> None:
    teacher = tiny_depth_model()
    image = torch.rand(2, 3, SHORT, 48)
    student = jetvit.convert(teacher, "FFFF")
    ref = predict_depth(teacher, image, short_side=SHORT)
    with torch.no_grad():
        torch.testing.assert_close(ref, teacher.predict_depth(teacher.normalize(image)))  # no resize at the native size
    torch.testing.assert_close(predict_depth(student, image, head=teacher.depth_head, short_side=SHORT), ref)
    other = jetvit.convert(teacher, "LWLF")
    assert not torch.allclose(predict_depth(other, image, head=teacher.depth_head, short_side=SHORT), ref)


def test_predict_depth_resizes_to_patch_multiples_and_back(tiny_depth_model, tiny_model) -> None:
    teacher = tiny_depth_model()
    out = predict_depth(teacher, torch.rand(1, 3, 21, 30), short_side=SHORT)  # 21x30 -> 32x48 (rounded up) -> back
    assert out.shape == (1, 21, 30) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no depth head"):
        predict_depth(tiny_model(depth=1), torch.rand(1, 3, 32, 32))


def test_relative_depth_eval_is_perfect_against_its_own_aligned_prediction(tiny_depth_model, tmp_path: Path) -> None:
    teacher = tiny_depth_model()
    write_images(tmp_path, 3)
    (tmp_path / "depth").mkdir()
    for i in range(3):
        image = torch.from_numpy(np.array(Image.open(tmp_path / "images" / f"{i}.png"))).permute(2, 0, 1) / 255
        disparity = predict_depth(teacher, image[None].float(), short_side=SHORT)[0]
        np.save(tmp_path / "depth" / f"{i}.npy", (1.0 / (0.5 * disparity + 0.2)).numpy())  # depth = 1 / affine(disp)
    data = DepthFolder(tmp_path)
    seen: list[int] = []
    result = evaluate_depth(teacher, data, short_side=SHORT, progress=False, on_prediction=lambda i, *_: seen.append(i))
    assert result["align"] == "disparity" and result["num_images"] == 3 and seen == [0, 1, 2]
    assert result["abs_rel"] < 1e-4 and result["delta1"] == 1.0
    worse = evaluate_depth(
        jetvit.convert(teacher, "LLLL"), data, head=teacher.depth_head, short_side=SHORT, progress=False
    )
    assert worse["abs_rel"] > result["abs_rel"]

    scorer = DepthScorer(teacher.depth_head, data, score="neg_abs_rel", size=2, short_side=SHORT)
    assert scorer.name == "neg_abs_rel" and len(scorer.dataset) == 2
    assert scorer(teacher) == pytest.approx(0.0, abs=1e-4)
    assert scorer.last_seconds > 0 and scorer.last_result["num_images"] == 2

    # The same through the search's plug-in point, as a run config names it.
    from jetvit.search.scorers import build_scorer

    scorer = build_scorer(
        "jetvit.tasks.scorers:depth_scorer",
        teacher=teacher,
        images=torch.zeros(1, 3, SHORT, SHORT),
        targets=[3],
        batch_size=1,
        device="cpu",
        options={"data": str(tmp_path), "short_side": SHORT},
    )
    assert scorer.name == "delta1" and scorer(jetvit.convert(teacher, "FFFF")) == 1.0


def test_da2k_eval_and_scorer(tiny_depth_model, tmp_path: Path) -> None:
    teacher = tiny_depth_model()
    write_images(tmp_path, 2)
    table = {}
    for i in range(2):
        image = torch.from_numpy(np.array(Image.open(tmp_path / "images" / f"{i}.png"))).permute(2, 0, 1) / 255
        disparity = predict_depth(teacher, image[None].float(), short_side=SHORT)[0]
        flat = disparity.flatten()
        hi, lo = divmod(int(flat.argmax()), 48), divmod(int(flat.argmin()), 48)
        table[f"images/{i}.png"] = [
            {"point1": list(lo), "point2": list(hi), "closer_point": "point2"},  # larger disparity = closer
            {"point1": list(hi), "point2": list(lo), "closer_point": "point1"},
        ]
    (tmp_path / "annotations.json").write_text(json.dumps(table))
    data = DA2K(tmp_path)
    assert evaluate_da2k(teacher, data, short_side=SHORT, progress=False)["accuracy"] == 1.0
    flipped = evaluate_da2k(teacher, data, short_side=SHORT, larger_is_closer=False, progress=False)
    assert flipped["accuracy"] == 0.0 and flipped["num_pairs"] == 4
    scorer = DepthScorer(teacher.depth_head, data, score="da2k", short_side=SHORT)
    assert scorer(jetvit.convert(teacher, "FFFF")) == 1.0
    with pytest.raises(ValueError, match="depth score must be one of"):
        DepthScorer(teacher.depth_head, data, score="rmse")


def test_segmentation_scorer_records_time(tiny_depth_model) -> None:
    from jetvit.heads import LinearSegConfig, LinearSegHead

    teacher = tiny_depth_model()
    head = LinearSegHead(LinearSegConfig(in_dim=32, num_classes=3)).eval()
    data = [(torch.rand(3, SHORT, 48), torch.randint(0, 3, (SHORT, 48))) for _ in range(3)]
    scorer = SegmentationScorer(head, data, size=2, short_side=SHORT, crop=SHORT, stride=16)
    value = scorer(teacher)
    assert scorer.name == "miou" and 0.0 <= value <= 1.0
    assert value == scorer.last_result["miou"] and scorer.last_seconds > 0
    assert fixed_subset(data, 2).indices == fixed_subset(data, 2).indices
