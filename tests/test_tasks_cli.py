"""`jetvit probe` and `jetvit eval` run for real on tiny saved models and tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jetvit
from jetvit.cli import main
from jetvit.tasks.depth import predict_depth

torch.set_num_threads(1)
COLOURS = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0]], dtype=np.uint8)
SIZE = 32


def write_seg_folder(root: Path, n: int, seed: int) -> None:
    """Images whose class is the colour of each 8x8 patch, with the matching index masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        label = rng.integers(0, 3, (SIZE // 8, 48 // 8)).repeat(8, 0).repeat(8, 1)
        Image.fromarray(COLOURS[label]).save(root / "images" / f"{i}.png")
        Image.fromarray(label.astype(np.uint8), mode="L").save(root / "masks" / f"{i}.png")


@pytest.fixture(scope="module")
def seg_setup(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seg")
    teacher = tiny_model(depth=3)
    jetvit.save(teacher, root / "teacher")
    jetvit.save(jetvit.convert(teacher, "LWF"), root / "student")
    write_seg_folder(root / "data" / "train", 6, seed=0)
    write_seg_folder(root / "data" / "val", 3, seed=1)
    code = main(
        ["probe", "--teacher", str(root / "teacher"), "--data", str(root / "data"), "--dataset", "folder",
         "--num-classes", "3", "--out", str(root / "probe"), "--iterations", "60", "--batch-size", "4",
         "--crop", "32", "--lr", "0.01", "--warmup", "0", "--eval-short-side", "32", "--eval-crop", "32",
         "--eval-stride", "16", "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "teacher": root / "teacher", "student": root / "student", "probe": root / "probe"}


def test_probe_writes_head_and_results(seg_setup: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    probe = seg_setup["probe"]
    meta = json.loads((probe / "head.json").read_text())
    results = json.loads((probe / "results.json").read_text())
    assert (probe / "head.safetensors").is_file()
    assert meta["config"] == {"in_dim": 32, "num_classes": 3, "dropout": 0.1}
    assert meta["meta"]["probe"]["iterations"] == 60 and meta["meta"]["dataset"] == "folder"
    assert results["val"]["miou"] == meta["meta"]["miou"] > 0.8
    assert len(results["val"]["per_class_iou"]) == 3


def test_eval_seg_side_by_side(seg_setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    s = seg_setup
    code = main(
        ["eval", "--model", str(s["student"]), "--teacher", str(s["teacher"]), "--task", "seg",
         "--data", str(s["root"] / "data"), "--num-classes", "3", "--head", str(s["probe"]), "--out", str(tmp_path),
         "--figures", "2", "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "student" in printed and "mIoU" in printed
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["archs"] == {"teacher": "FFF", "student": "LWF"}
    # Same probe, data and windows as `jetvit probe` used: the teacher's mIoU is reproduced exactly.
    probe_miou = json.loads((s["probe"] / "results.json").read_text())["val"]["miou"]
    assert report["results"]["teacher"]["miou"] == pytest.approx(probe_miou)
    assert 0 <= report["results"]["student"]["miou"] <= 1
    assert [Path(f).name for f in report["figures"]] == ["000.png", "001.png"]
    with Image.open(report["figures"][0]) as im:
        assert im.width > 2 * im.height  # four panels in a row


def test_eval_user_mistakes_are_one_line_errors(seg_setup: dict[str, Path], tmp_path: Path, capsys) -> None:
    s = seg_setup
    base = ["eval", "--model", str(s["student"]), "--data", str(s["root"] / "data"), "--out", str(tmp_path)]
    assert main([*base, "--task", "seg", "--num-classes", "3"]) == 2
    assert "--task seg needs --head" in capsys.readouterr().err
    assert main([*base, "--task", "seg", "--dataset", "da2k", "--head", str(s["probe"])]) == 2
    assert "'da2k' does not fit --task seg" in capsys.readouterr().err
    assert main([*base, "--task", "depth"]) == 2
    assert "no depth head" in capsys.readouterr().err
    assert main([*base, "--task", "seg", "--num-classes", "3", "--head", str(tmp_path / "nothing")]) == 2
    assert "no segmentation head" in capsys.readouterr().err


def test_eval_depth_and_da2k(tiny_depth_model, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    teacher = tiny_depth_model()
    jetvit.save(teacher, tmp_path / "teacher")
    jetvit.save(jetvit.convert(teacher, "LLWF"), tmp_path / "student")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "depth").mkdir()
    rng = np.random.default_rng(0)
    pairs = {}
    for i in range(2):
        rgb = rng.integers(0, 256, (SIZE, 48, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(data / "images" / f"{i}.png")
        disparity = predict_depth(teacher, torch.from_numpy(rgb).permute(2, 0, 1)[None] / 255, short_side=SIZE)[0]
        depth_m = 1.0 / (disparity.numpy() / (20 * float(disparity.max())) + 1 / 60)  # 15..60 m, affine in 1/depth
        depth_mm = np.round(1000.0 * depth_m)  # 16-bit PNG in millimetres
        Image.fromarray(depth_mm.astype(np.uint16)).save(data / "depth" / f"{i}.png")
        hi, lo = divmod(int(disparity.argmax()), 48), divmod(int(disparity.argmin()), 48)
        pairs[f"images/{i}.png"] = [{"point1": list(lo), "point2": list(hi), "closer_point": "point2"}]
    (data / "annotations.json").write_text(json.dumps(pairs))

    common = ["--model", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--task", "depth",
              "--data", str(data), "--short-side", str(SIZE), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(["eval", *common, "--out", str(tmp_path / "depth")]) == 0
    report = json.loads((tmp_path / "depth" / "results.json").read_text())
    teacher_r, student_r = report["results"]["teacher"], report["results"]["student"]
    assert report["metric_kind"] == "depth" and teacher_r["align"] == "disparity"
    assert teacher_r["abs_rel"] < 1e-4 and teacher_r["delta1"] == 1.0  # only millimetre rounding is left
    assert student_r["abs_rel"] > teacher_r["abs_rel"]
    assert len(report["figures"]) == 2 and all(Path(f).is_file() for f in report["figures"])
    assert "AbsRel" in capsys.readouterr().out
    # The search's depth scorer runs the same evaluation: its scores are the CLI's numbers for the student.
    from jetvit.search.scorers import build_scorer

    plug = dict(teacher=teacher, images=torch.zeros(1, 3, SIZE, SIZE), targets=[3], batch_size=1, device="cpu")
    options = {"data": str(data), "short_side": SIZE, "size": None, "score": "neg_abs_rel"}
    scorer = build_scorer("jetvit.tasks.scorers:depth_scorer", **plug, options=options)
    assert scorer(jetvit.load(tmp_path / "student")) == -student_r["abs_rel"]
    assert scorer.last_result["delta1"] == student_r["delta1"]

    assert main(["eval", *common, "--dataset", "da2k", "--out", str(tmp_path / "da2k"), "--figures", "1"]) == 0
    report = json.loads((tmp_path / "da2k" / "results.json").read_text())
    assert report["metric_kind"] == "da2k" and report["results"]["teacher"]["accuracy"] == 1.0
    assert report["results"]["student"]["num_pairs"] == 2 and len(report["figures"]) == 1


def test_search_plugs_in_the_segmentation_scorer(seg_setup: dict[str, Path]) -> None:
    from jetvit.search.scorers import build_scorer

    s = seg_setup
    teacher = jetvit.load(s["teacher"])
    common = dict(teacher=teacher, images=torch.zeros(1, 3, SIZE, SIZE), targets=[2], batch_size=1, device="cpu")
    options = {"data": str(s["root"] / "data"), "num_classes": 3, "head": str(s["probe"]), "size": None}
    scorer = build_scorer("jetvit.tasks.scorers:segmentation_scorer", **common, options=options)
    probe_miou = json.loads((s["probe"] / "results.json").read_text())["val"]["miou"]
    assert scorer.name == "miou" and scorer(teacher) == pytest.approx(probe_miou)
    # Without a head the factory trains one on the teacher from the given recipe.
    recipe = {
        "iterations": 2,
        "batch_size": 2,
        "crop": SIZE,
        "eval_short_side": SIZE,
        "eval_crop": SIZE,
        "eval_stride": 16,
    }
    options = {"data": str(s["root"] / "data"), "num_classes": 3, "probe": recipe, "size": 2}
    scorer = build_scorer("jetvit.tasks.scorers:segmentation_scorer", **common, options=options)
    assert 0 <= scorer(jetvit.load(s["student"])) <= 1 and len(scorer.dataset) == 2


def test_eval_and_the_scorer_share_one_evaluation(seg_setup: dict[str, Path], tmp_path: Path) -> None:
    """`jetvit eval` and the search's segmentation scorer run the same evaluation: with the same probe and data, the
    scorer's value is the CLI's number for the same model, to the bit."""
    from jetvit.search.scorers import build_scorer

    s = seg_setup
    code = main(
        ["eval", "--model", str(s["student"]), "--task", "seg", "--data", str(s["root"] / "data"), "--num-classes",
         "3", "--head", str(s["probe"]), "--out", str(tmp_path), "--figures", "0", "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    cli = json.loads((tmp_path / "results.json").read_text())["results"]["student"]
    teacher = jetvit.load(s["teacher"])
    common = dict(teacher=teacher, images=torch.zeros(1, 3, SIZE, SIZE), targets=[2], batch_size=1, device="cpu")
    options = {"data": str(s["root"] / "data"), "num_classes": 3, "head": str(s["probe"]), "size": None}
    scorer = build_scorer("jetvit.tasks.scorers:segmentation_scorer", **common, options=options)
    student = jetvit.load(s["student"])
    assert scorer(student) == cli["miou"] and scorer.last_result["pixel_acc"] == cli["pixel_acc"]
    np.testing.assert_array_equal(scorer.last_result["per_class_iou"], cli["per_class_iou"])
    # Without the probe's recorded windows (a 2x2-window overlap instead of 16 px), the number moves: they were used.
    options["stride"] = 8
    assert build_scorer("jetvit.tasks.scorers:segmentation_scorer", **common, options=options)(student) != cli["miou"]


def test_probe_options_are_the_recipe_fields() -> None:
    """Every field of the probe recipes is a `jetvit probe` option; one not given keeps the recipe's default."""
    import dataclasses

    from jetvit.cli import build_parser
    from jetvit.cli.probe import recipe
    from jetvit.tasks.config import ClsProbeConfig, ProbeConfig

    base = ["probe", "--teacher", "t", "--data", "d", "--out", "o"]
    args = build_parser().parse_args([*base, "--scale-min", "0.75", "--dropout", "0.2", "--eval-stride", "300"])
    assert recipe(args) == ProbeConfig(scale_min=0.75, dropout=0.2, eval_stride=300)
    args = build_parser().parse_args([*base, "--task", "cls", "--no-avgpool", "--optimizer", "adamw"])
    assert recipe(args) == ClsProbeConfig(avgpool=False, optimizer="adamw")
    for config in (ProbeConfig, ClsProbeConfig):
        for f in dataclasses.fields(config):
            flag = f"--{f.name.replace('_', '-')}"
            assert getattr(build_parser().parse_args(base), f.name) is None, flag  # the recipe's default applies
    with pytest.raises(ValueError, match="--dropout not used by --task cls"):
        recipe(build_parser().parse_args([*base, "--task", "cls", "--dropout", "0.2"]))
