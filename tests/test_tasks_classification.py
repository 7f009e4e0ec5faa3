"""Classification: the image-folder reader, top-k metrics against hand-worked cases, the linear probe on a tiny model,
`jetvit probe --task cls` / `jetvit eval --task cls` run for real, and the search scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import write_image_folder

import jetvit
from jetvit.cli import main
from jetvit.cli.common import class_spread_limit
from jetvit.heads import LinearClsConfig, LinearClsHead
from jetvit.tasks.classification import (
    ClsProbeConfig,
    evaluate_classification,
    load_cls_probe,
    save_cls_probe,
    train_cls_probe,
)
from jetvit.tasks.datasets import ImageFolderClassification
from jetvit.tasks.metrics import ClsMetrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cls_setup(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cls")
    teacher = tiny_model(depth=3)
    jetvit.save(teacher, root / "teacher")
    jetvit.save(jetvit.convert(teacher, "LWF"), root / "student")
    write_image_folder(root / "data" / "train", 4, seed=0)
    write_image_folder(root / "data" / "val", 2, seed=1)
    code = main(
        ["probe", "--task", "cls", "--teacher", str(root / "teacher"), "--data", str(root / "data"),
         "--out", str(root / "probe"), "--iterations", "40", "--batch-size", "6", "--crop", "32",
         "--optimizer", "adamw", "--lr", "0.05", "--n-last-blocks", "2", "--avgpool", "--eval-short-side", "32",
         "--eval-crop", "32", "--eval-batch-size", "4", "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "teacher": root / "teacher", "student": root / "student", "probe": root / "probe"}


# --------------------------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------------------------


def test_image_folder_reader(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", 2, seed=0)
    data = ImageFolderClassification(tmp_path, split="val")
    assert data.class_names == ("blue", "green", "red") and data.num_classes == 3 and len(data) == 6
    image, label = data[4]  # sorted: blue 0, 1; green 2, 3; red 4, 5
    assert label == 2 and image.shape == (3, 32, 40) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image[0].mean() > 0.7 > 0.3 > image[2].mean()
    # `--max-images` of a class-sorted folder: a seeded draw over all of it, not the first (all "blue") images.
    subset = class_spread_limit(data, 3, option="--max-images")
    assert len(subset) == 3 and len({data.samples[i][1] for i in subset.indices}) > 1


def test_image_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no train under"):
        ImageFolderClassification(tmp_path, split="train")
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no class folders in {tmp_path / 'val'}"):
        ImageFolderClassification(tmp_path, split="val")
    write_image_folder(tmp_path / "val", 1, seed=0)
    (tmp_path / "val" / "cat").mkdir()
    (tmp_path / "val" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="class folders without images .* in .*val: cat"):
        ImageFolderClassification(tmp_path, split="val")


# --------------------------------------------------------------------------------------------------------------------
# Metrics, worked by hand
# --------------------------------------------------------------------------------------------------------------------


def test_topk_hand_worked() -> None:
    logits = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.0, 0.3]).repeat(3, 1)
    m = ClsMetrics(6)
    # class 3 scores highest (rank 0); class 1 has one above it (rank 1); class 4 is last (rank 5).
    m.update(logits, torch.tensor([3, 1, 4]))
    assert m.compute() == {"top1": 1 / 3, "top5": 2 / 3, "num_images": 3}
    m.update(logits[0], 4)  # one sample, (C,) logits and an int target: wrong at 1 and at 5
    assert m.compute() == {"top1": 1 / 4, "top5": 2 / 4, "num_images": 4}


def test_topk_ties_count_against_the_true_class() -> None:
    m = ClsMetrics(3, topk=(1, 2, 3))
    m.update(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0]))  # tied first with class 1: rank 1
    m.update(torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([2]))  # a constant prediction: rank 2
    assert m.compute() == {"top1": 0.0, "top2": 0.5, "top3": 1.0, "num_images": 2}
    m = ClsMetrics(3, topk=(1, 2))
    # A NaN score ranks above every class: a NaN true class is last (rank 2), a NaN rival is ahead of it (rank 1).
    m.update(torch.tensor([[math.nan, 1.0, 0.0], [1.0, math.nan, 0.0]]), torch.tensor([0, 0]))
    assert m.compute() == {"top1": 0.0, "top2": 0.5, "num_images": 2}


def test_topk_with_k_above_the_number_of_classes() -> None:
    m = ClsMetrics(3)  # top5 with 3 classes: every sample is in the top 5
    m.update(torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), torch.tensor([2, 0]))
    assert m.compute() == {"top1": 0.5, "top5": 1.0, "num_images": 2}


def test_topk_mistakes() -> None:
    assert math.isnan(ClsMetrics(3).compute()["top1"])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        ClsMetrics(3).update(torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"expected logits \(B, 3\)"):
        ClsMetrics(3).update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="topk"):
        ClsMetrics(3, topk=(0,))


# --------------------------------------------------------------------------------------------------------------------
# Head and probe
# --------------------------------------------------------------------------------------------------------------------


def test_head_reads_cls_tokens_and_mean_patch(tiny_model) -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    head = LinearClsHead(LinearClsConfig(in_dim=32, num_classes=5, n_last_blocks=2, avgpool=True))
    assert head.linear.in_features == 3 * 32
    feats = model.block_features(x, [-2, -1])
    expected = torch.cat([feats[0][1][:, 0], feats[1][1][:, 0], feats[1][0].mean(dim=(2, 3))], dim=-1)
    torch.testing.assert_close(head.features(feats), expected, rtol=0, atol=0)
    assert head(feats).shape == (2, 5)
    with pytest.raises(ValueError, match="reads 2 blocks"):
        head(feats[:1])


def test_probe_learns_colours_and_round_trips(tiny_model, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", 3, seed=0)
    write_image_folder(tmp_path / "val", 2, seed=1)
    model = tiny_model()
    cfg = ClsProbeConfig.from_dict(
        {"iterations": 30, "batch_size": 6, "crop": 32, "optimizer": "sgd", "lr": 0.5, "eval_short_side": 32,
         "eval_crop": 32}
    )  # fmt: skip
    train = ImageFolderClassification(tmp_path, split="train")
    head = train_cls_probe(model, train, cfg, num_classes=3, progress=False)
    val = ImageFolderClassification(tmp_path, split="val")
    result = evaluate_classification(model, head, val, short_side=32, crop=32, batch_size=4, progress=False)
    assert result["num_images"] == 6 and result["top1"] > 1 / 3 and result["top5"] == 1.0
    save_cls_probe(head, tmp_path / "probe", meta={"probe": {"lr": 0.5}})
    loaded, meta = load_cls_probe(tmp_path / "probe" / "head.safetensors")
    assert loaded.cfg == head.cfg and meta == {"probe": {"lr": 0.5}}
    assert evaluate_classification(model, loaded, val, short_side=32, crop=32, progress=False)["top1"] == result["top1"]
    with pytest.raises(ValueError, match="unknown classification probe config key 'layer'"):
        ClsProbeConfig.from_dict({"layer": -1})
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ClsProbeConfig(optimizer="adam")


# --------------------------------------------------------------------------------------------------------------------
# CLI and scorer
# --------------------------------------------------------------------------------------------------------------------


def test_probe_cli_writes_head_and_results(cls_setup: dict[str, Path]) -> None:
    probe = cls_setup["probe"]
    meta = json.loads((probe / "head.json").read_text())
    results = json.loads((probe / "results.json").read_text())
    assert (probe / "head.safetensors").is_file()
    assert meta["config"] == {"in_dim": 32, "num_classes": 3, "n_last_blocks": 2, "avgpool": True}
    assert meta["meta"]["class_names"] == ["blue", "green", "red"] and meta["meta"]["probe"]["iterations"] == 40
    assert results["val"]["top1"] == meta["meta"]["top1"] > 1 / 3 and results["val"]["num_images"] == 6


def eval_args(s: dict[str, Path], out: Path) -> list[str]:
    return ["eval", "--task", "cls", "--model", str(s["student"]), "--teacher", str(s["teacher"]),
            "--data", str(s["root"] / "data"), "--head", str(s["probe"]), "--out", str(out), "--device", "cpu",
            "--no-progress"]  # fmt: skip


def test_eval_cls_side_by_side(cls_setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    s = cls_setup
    assert main(eval_args(s, tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "teacher" in printed and "student" in printed
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["archs"] == {"teacher": "FFF", "student": "LWF"} and report["metric_kind"] == "cls"
    # Same head, data and crops as `jetvit probe` used: the teacher's top-1 is reproduced exactly.
    probe_top1 = json.loads((s["probe"] / "results.json").read_text())["val"]["top1"]
    assert report["results"]["teacher"]["top1"] == probe_top1
    assert 0 <= report["results"]["student"]["top1"] <= 1 and report["figures"] == []
    assert main([*eval_args(s, tmp_path / "some"), "--max-images", "3"]) == 0
    some = json.loads((tmp_path / "some" / "results.json").read_text())["results"]["teacher"]
    assert some["num_images"] == 3


def test_cls_user_mistakes_are_one_line_errors(cls_setup: dict[str, Path], tmp_path: Path, capsys) -> None:
    s = cls_setup
    data = str(s["root"] / "data")
    assert main(["eval", "--task", "cls", "--model", str(s["student"]), "--data", data, "--out", str(tmp_path)]) == 2
    assert "--task cls needs --head" in capsys.readouterr().err
    base = ["probe", "--task", "cls", "--teacher", str(s["teacher"]), "--data", data, "--out", str(tmp_path)]
    assert main([*base, "--layer", "2"]) == 2
    assert "--layer not used by --task cls" in capsys.readouterr().err
    assert main([*base, "--dataset", "ade20k"]) == 2
    assert "image folder" in capsys.readouterr().err


def test_search_plugs_in_the_classification_scorer(cls_setup: dict[str, Path]) -> None:
    from jetvit.search.scorers import build_scorer

    s = cls_setup
    teacher = jetvit.load(s["teacher"])
    common = dict(teacher=teacher, images=torch.zeros(1, 3, 32, 32), targets=[2], batch_size=1, device="cpu")
    options = {"data": str(s["root"] / "data"), "head": str(s["probe"]), "size": None}
    scorer = build_scorer("jetvit.tasks.scorers:classification_scorer", **common, options=options)
    probe_top1 = json.loads((s["probe"] / "results.json").read_text())["val"]["top1"]
    assert scorer.name == "top1" and scorer(teacher) == probe_top1
    # Without a head the factory trains one on the teacher from the given recipe.
    recipe = {"iterations": 2, "batch_size": 2, "crop": 32, "eval_short_side": 32, "eval_crop": 32}
    options = {"data": str(s["root"] / "data"), "probe": recipe, "size": 4}
    scorer = build_scorer("jetvit.tasks.scorers:classification_scorer", **common, options=options)
    assert 0 <= scorer(jetvit.load(s["student"])) <= 1 and len(scorer.dataset) == 4
    assert scorer.last_result["num_images"] == 4
