"""Detection: YOLOS postprocessing and COCO box AP against hand-worked cases, the COCO reader on a generated keyshapes
set, evaluation with a head whose answer is known, `jetvit eval --task det` run for real, the search scorer, and the
distillation loss seeing the detection tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jetvit
from jetvit.cli import main
from jetvit.tasks.datasets import CocoDetection, coco_layout
from jetvit.tasks.detection import evaluate_detection, input_size, label_to_category, postprocess
from jetvit.tasks.synthetic import render, sample_scene, write_coco

pytest.importorskip("pycocotools")
torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------------
# COCO box AP, worked by hand (pycocotools: 101 recall points, IoU thresholds .50:.05:.95)
# --------------------------------------------------------------------------------------------------------------------


def coco_set(boxes_per_image: list[list[list[float]]], *, size: tuple[int, int] = (100, 100)) -> dict:
    """A COCO instances dict: image i (id i + 1) holds the category-1 boxes `boxes_per_image[i]`."""
    H, W = size
    anns = [
        {"image_id": i + 1, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        for i, boxes in enumerate(boxes_per_image)
        for box in boxes
    ]
    for k, a in enumerate(anns):
        a["id"] = k + 1
    return {
        "images": [
            {"id": i + 1, "file_name": f"{i}.png", "height": H, "width": W} for i in range(len(boxes_per_image))
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }


def ap(gt: dict, predictions: list[list[tuple[list[float], float]]]) -> dict:
    """COCO AP of category-1 predictions [(box, score), ...] per image."""
    from jetvit.tasks.metrics import DetectionMetrics

    m = DetectionMetrics(gt)
    for i, preds in enumerate(predictions):
        boxes = torch.tensor([b for b, _ in preds], dtype=torch.float64).reshape(-1, 4)
        scores = torch.tensor([s for _, s in preds], dtype=torch.float64)
        m.update({"boxes": boxes, "scores": scores, "category_ids": torch.ones(len(preds), dtype=torch.int64)},
                 {"image_id": i + 1})  # fmt: skip
    return m.compute()


GT = [10.0, 20.0, 40.0, 40.0]


def test_perfect_prediction_is_ap_1() -> None:
    r = ap(coco_set([[GT]]), [[(GT, 0.9)]])
    for key in ("map", "ap50", "ap75", "ar100", "ap_medium"):  # 40 x 40 = 1600 px: medium (32^2 .. 96^2)
        assert r[key] == pytest.approx(1.0, abs=1e-12), key
    assert list(r["per_category_ap"]) == [1]  # category 2 has no ground truth: left out, not 0
    assert math.isnan(r["ap_small"])
    assert r["num_images"] == 1 and r["num_detections"] == 1


def test_iou_064_counts_at_050_to_060_only() -> None:
    # A 32 x 32 box inside the 40 x 40 one: IoU = 1024 / 1600 = 0.64, a match at thresholds .50, .55, .60 (3 of 10).
    r = ap(coco_set([[GT]]), [[([10.0, 20.0, 32.0, 32.0], 0.9)]])
    assert (r["ap50"], r["ap75"]) == (pytest.approx(1.0, abs=1e-12), 0.0)
    assert r["map"] == pytest.approx(0.3, abs=1e-12)
    # IoU 0.6 (40 x 24 of 40 x 40): counts at AP50, not at AP75.
    r = ap(coco_set([[GT]]), [[([10.0, 20.0, 40.0, 24.0], 0.9)]])
    assert (r["ap50"], r["ap75"]) == (pytest.approx(1.0, abs=1e-12), 0.0)


def test_duplicates_and_false_positives() -> None:
    # A duplicate scoring below the match does not lower AP: precision at recall 1 is 1 before it comes.
    r = ap(coco_set([[GT]]), [[(GT, 0.9), (GT, 0.8)]])
    assert r["map"] == pytest.approx(1.0, abs=1e-12)
    # A false positive scoring above the only match: precision 1/2 at every recall level.
    r = ap(coco_set([[GT]]), [[([60.0, 60.0, 10.0, 10.0], 0.9), (GT, 0.8)]])
    assert r["map"] == pytest.approx(0.5, abs=1e-12)
    # Two objects, a duplicate of the first between the matches: ranked TP, FP, TP -> recall .5, .5, 1 and
    # precision 1, 1/2, 2/3; interpolated 1 up to recall .50 (51 of the 101 points), 2/3 above (50 points).
    second = [60.0, 60.0, 30.0, 30.0]
    r = ap(coco_set([[GT, second]]), [[(GT, 0.9), (GT, 0.8), (second, 0.7)]])
    assert r["map"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101, abs=1e-12)
    # No detection at all: AP 0 where there is ground truth (pycocotools refuses an empty result list; we do not).
    r = ap(coco_set([[GT], []]), [[], []])
    assert r["map"] == 0.0 and r["num_detections"] == 0 and r["num_images"] == 2


def test_missing_pycocotools_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from jetvit.cli import user_error
    from jetvit.tasks.metrics import DetectionMetrics

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install jetvit\[det\]") as e:
        DetectionMetrics(coco_set([[GT]]))
    assert "pip install jetvit[det]" in user_error(e.value)


# --------------------------------------------------------------------------------------------------------------------
# Postprocessing and labels, worked by hand
# --------------------------------------------------------------------------------------------------------------------


def test_postprocess_hand_worked() -> None:
    # probabilities (.1, .3, .6) over (label 0, label 1, no object): "no object" is dropped, label 1 scores .3
    logits = torch.tensor([[[math.log(1), math.log(3), math.log(6)], [math.log(5), math.log(4), math.log(1)]]])
    boxes = torch.tensor([[[0.5, 0.25, 0.2, 0.5], [0.1, 0.9, 0.2, 0.2]]])  # (cx, cy, w, h) relative
    (pred,) = postprocess(logits, boxes, [(100, 200)])  # original H = 100, W = 200
    torch.testing.assert_close(pred["scores"], torch.tensor([0.3, 0.5]))
    assert pred["labels"].tolist() == [1, 0]
    # x = (cx - w/2) W, y = (cy - h/2) H, w W, h H
    torch.testing.assert_close(pred["boxes"], torch.tensor([[80.0, 0.0, 40.0, 50.0], [0.0, 80.0, 40.0, 20.0]]))
    with pytest.raises(ValueError, match="expected logits"):
        postprocess(logits, boxes, [(1, 1), (1, 1)])


def test_input_size_follows_yolos_and_patches() -> None:
    # COCO's 480 x 640: short side 800 -> 800 x 1066.7 -> 1067, rounded up to 16 -> 1072
    assert input_size(480, 640, short_side=800, max_side=1333, multiple=16) == (800, 1072)
    # 300 x 1000: 800 x 2667 exceeds 1333, so the long side is 1333: 399.9 x 1333 -> 400 x 1344
    assert input_size(300, 1000, short_side=800, max_side=1333, multiple=16) == (400, 1344)


def test_labels_map_to_categories(tiny_yolos) -> None:
    head = tiny_yolos().detection_head  # 4 labels, no names
    categories = {1: "key", 3: "other shape"}
    assert label_to_category(head, categories) == ({1: 1, 3: 3}, "identity")
    assert label_to_category(head, categories, {0: 3, 2: 1}) == ({0: 3, 2: 1}, "explicit")
    named = tiny_yolos(detection_head={"num_labels": 4, "labels": ["N/A", "other shape", "key", "N/A"]})
    assert label_to_category(named.detection_head, categories) == ({2: 1, 1: 3}, "names")
    with pytest.raises(ValueError, match=r"categories \[7\] lie outside"):
        label_to_category(head, {7: "seven"})
    with pytest.raises(ValueError, match=r"labels \[9\]"):
        label_to_category(head, categories, {9: 1})


# --------------------------------------------------------------------------------------------------------------------
# The generated COCO set and its reader
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, split="val", length=4, size=(48, 64))
    return root


def test_generated_coco_boxes_are_the_objects(coco_root: Path) -> None:
    data = CocoDetection(*coco_layout(coco_root, "val"))
    assert len(data) == 4 and data.categories == {1: "key", 2: "matching shape", 3: "other shape"}
    for i in range(len(data)):
        image, target = data[i]
        _, seg, _ = render(sample_scene(0, "val", i), (48, 64))
        assert image.shape == (3, 48, 64) and target["image_id"] == i + 1
        assert (target["category_ids"] == 1).sum() == 1  # one key per scene
        for (x, y, w, h), cat in zip(target["boxes"].int().tolist(), target["category_ids"].tolist()):
            inside = seg[y : y + h, x : x + w] == cat
            # tight: the object's class reaches every side of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # every object pixel lies in a box of its class
        covered = torch.zeros_like(seg, dtype=torch.bool)
        for (x, y, w, h), cat in zip(target["boxes"].int().tolist(), target["category_ids"].tolist()):
            covered[y : y + h, x : x + w] |= seg[y : y + h, x : x + w] == cat
        assert covered.sum() == (seg > 0).sum()


def test_reader_errors_name_the_file(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no annotations/instances_val2017.json"):
        coco_layout(coco_root, "val2017")
    ann = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    ann["images"][0]["file_name"] = "gone.png"
    (tmp_path / "bad.json").write_text(json.dumps(ann))
    with pytest.raises(FileNotFoundError, match="1 images of .*bad.json are not in .*: gone.png"):
        CocoDetection(coco_root / "val", tmp_path / "bad.json")
    (tmp_path / "not_coco.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoDetection(coco_root / "val", tmp_path / "not_coco.json")


def test_evaluator_on_the_generated_set(coco_root: Path) -> None:
    """The ground truth fed back as predictions scores 1; each box shifted right by a fifth of its width overlaps
    its object with IoU (4/5) / (6/5) = 2/3: a match at .50 .. .65 (4 of 10 thresholds), so mAP 0.4, AP50 1, AP75 0."""
    from jetvit.tasks.metrics import DetectionMetrics

    data = CocoDetection(*coco_layout(coco_root, "val"))
    exact, shifted = DetectionMetrics(data.ground_truth), DetectionMetrics(data.ground_truth)
    for _, target in (data[i] for i in range(len(data))):
        n = len(target["boxes"])
        pred = {"boxes": target["boxes"], "scores": torch.ones(n), "category_ids": target["category_ids"]}
        exact.update(pred, target)
        moved = target["boxes"].clone()
        moved[:, 0] += moved[:, 2] / 5
        shifted.update({**pred, "boxes": moved}, target)
    r = exact.compute()
    assert [r[k] for k in ("map", "ap50", "ap75")] == pytest.approx([1.0] * 3, abs=1e-12)
    assert set(r["per_category_ap"]) == {1, 2, 3}
    r = shifted.compute()
    assert [r[k] for k in ("map", "ap50", "ap75")] == pytest.approx([0.4, 1.0, 0.0], abs=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Evaluation with a head whose answer is known
# --------------------------------------------------------------------------------------------------------------------


def oracle_set(root: Path) -> Path:
    """Two images of different sizes and aspects, each with one category-1 box at the same relative place:
    (cx, cy, w, h) = (0.4, 0.4, 0.4, 0.4)."""
    (root / "val").mkdir(parents=True)
    sizes, boxes = [(40, 60), (80, 80)], [[12.0, 8.0, 24.0, 16.0], [16.0, 16.0, 32.0, 32.0]]
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val" / f"{i}.png")
    gt = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in enumerate(sizes)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "key"}, {"id": 2, "name": "matching shape"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val.json").write_text(json.dumps(gt))
    return root


def oracle(tiny_yolos, box: tuple[float, float, float, float]) -> jetvit.HybridViT:
    """A tiny YOLOS with one detection token whose heads ignore the tokens: its detection is label 1 (probability
    ~1) with box `box` (cx, cy, w, h), through the last layers' biases. (One token: equal scores of several would
    tie across images, and COCO's AP depends on how ties are ordered.)"""
    model = tiny_yolos(num_detection_tokens=1)
    with torch.no_grad():
        for mlp in (model.detection_head.class_head, model.detection_head.box_head):
            mlp.layers[-1].weight.zero_()
        model.detection_head.class_head.layers[-1].bias.copy_(torch.tensor([0.0, 20.0, 0.0, 0.0, 0.0]))
        model.detection_head.box_head.layers[-1].bias.copy_(torch.logit(torch.tensor(box, dtype=torch.float64)))
    return model


def test_evaluation_scales_boxes_to_each_image(tiny_yolos, tmp_path: Path) -> None:
    """Relative boxes come back in each image's own pixels whatever size the model ran at (32 x 48 here)."""
    data = CocoDetection(*coco_layout(oracle_set(tmp_path), "val"))
    options = dict(short_side=32, max_side=48, progress=False)
    r = evaluate_detection(oracle(tiny_yolos, (0.4, 0.4, 0.4, 0.4)), data, **options)
    assert r["map"] == pytest.approx(1.0) and r["label_map"] == "identity" and r["num_detections"] == 2
    # moved right by a fifth of the width: IoU 2/3 in both images -> mAP 0.4 (see the evaluator test)
    r = evaluate_detection(oracle(tiny_yolos, (0.4 + 0.4 / 5, 0.4, 0.4, 0.4)), data, **options)
    assert [r[k] for k in ("map", "ap50", "ap75")] == pytest.approx([0.4, 1.0, 0.0], abs=1e-6)


def test_eval_det_side_by_side(tiny_yolos, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    teacher = oracle(tiny_yolos, (0.4, 0.4, 0.4, 0.4))
    jetvit.save(teacher, tmp_path / "teacher")
    jetvit.save(jetvit.convert(teacher, "LW"), tmp_path / "student")
    data = oracle_set(tmp_path / "data")
    args = ["eval", "--task", "det", "--model", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
            "--data", str(data), "--split", "val", "--short-side", "32", "--max-side", "48", "--figures", "2",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mAP .50:.95" in printed and "AP50" in printed and "teacher" in printed and "student" in printed
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["metric_kind"] == "det" and report["archs"] == {"teacher": "FF", "student": "LW"}
    for name in ("teacher", "student"):  # the student inherited the heads, which ignore the tokens here
        assert report["results"][name]["map"] == pytest.approx(1.0)
    assert [Path(f).name for f in report["figures"]] == ["000.png", "001.png"]
    with Image.open(report["figures"][0]) as im:
        assert im.width > 2 * im.height  # ground truth, teacher, student in a row

    base = args[: args.index("--out")] + ["--out", str(tmp_path / "bad")]
    assert main([*base, "--label-map", str(tmp_path / "nope.json")]) == 2
    assert "no label map file" in capsys.readouterr().err
    assert main([*base, "--frames", "4"]) == 2
    assert "--frames is for --task video" in capsys.readouterr().err
    assert main([*base, "--dataset", "folder"]) == 2
    assert "does not fit --task det" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# The search scorer and distillation
# --------------------------------------------------------------------------------------------------------------------


def test_search_plugs_in_the_detection_scorer(tiny_yolos, coco_root: Path) -> None:
    from jetvit.search.scorers import build_scorer

    teacher = tiny_yolos()
    common = dict(teacher=teacher, images=torch.zeros(1, 3, 32, 48), targets=[1], batch_size=1, device="cpu")
    options = {"data": str(coco_root), "split": "val", "size": 3, "short_side": 32, "max_side": 48}
    scorer = build_scorer("jetvit.tasks.scorers:detection_scorer", **common, options=options)
    student = jetvit.convert(teacher, "LW")
    student.detection_head = None  # a candidate is scored with the teacher's heads, not its own
    reference = evaluate_detection(student, scorer.dataset, head=teacher.detection_head, short_side=32, max_side=48,
                                   progress=False)  # fmt: skip
    assert scorer.name == "map" and scorer(student) == reference["map"]
    assert scorer.last_result["num_images"] == 3 and len(scorer.dataset) == 3
    with pytest.raises(ValueError, match=r"categories \[9\]"):
        build_scorer("jetvit.tasks.scorers:detection_scorer", **common, options={**options, "label_map": {0: 9}})
    plain = dict(common, teacher=jetvit.convert(teacher, "FF"))
    plain["teacher"].detection_head = None
    with pytest.raises(ValueError, match="needs a teacher with detection heads"):
        build_scorer("jetvit.tasks.scorers:detection_scorer", **plain, options=options)


def test_distillation_loss_sees_the_detection_tokens(tiny_yolos) -> None:
    """The distilled features hold CLS, the S detection tokens and the patches (N = 1 + S + h*w), and changing only
    the detection tokens' outputs moves the loss by exactly delta^2 * S / N."""
    from jetvit.train.distill import DistillStudent, feature_loss

    teacher = tiny_yolos()
    student = jetvit.convert(teacher, "LW")
    S, x = teacher.cfg.num_detection_tokens, torch.randn(2, 3, 32, 48)
    target = teacher.token_features(x, [1])
    N = 1 + S + 4 * 6
    assert [t.shape for t in target] == [(2, N, 32)]
    # the detection tokens sit after CLS, as the final tokens hold them (last, in the teacher's order)
    torch.testing.assert_close(target[0][:, 1 : 1 + S], teacher(x)[:, -S:])

    same = DistillStudent(jetvit.convert(teacher, "FF"), [1], with_depth=False)
    feats, _ = same(x)
    assert feature_loss(feats, target).item() == pytest.approx(0.0, abs=1e-10)

    delta = 0.5
    P = teacher.num_prefix_tokens

    def shift_detection_tokens(module, inputs, out):  # the final norm's output, blocks' order: CLS, det, patches
        out = out.clone()
        out[:, P : P + S] += delta
        return out

    handle = same.model.norm.register_forward_hook(shift_detection_tokens)
    feats, _ = same(x)
    handle.remove()
    assert feature_loss(feats, target).item() == pytest.approx(delta**2 * S / N, rel=1e-5)

    # and the gradient reaches the student's detection tokens
    trained = DistillStudent(student, [1], with_depth=False)
    feature_loss(trained(x)[0], target).backward()
    assert student.det_tokens.grad is not None and student.det_tokens.grad.abs().sum() > 0
