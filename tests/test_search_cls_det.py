"""The shipped classification and detection configs (`dino-v1-cls`, `yolos-det`): they load and validate, and each runs
for real through `jetvit search` (the CLI's `main`, in this process as `tests/test_tasks_cli.py` runs it: a fresh
process per search cost about 8 s more on two busy cores) on a tiny random Hugging Face teacher (a DINO v1 style
`ViTModel`, a `YolosForObjectDetection`) and tiny generated data, the config's placeholders pointed there. What the
search's scorer reported is checked against `jetvit eval` on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_image_folder

import jetvit
from jetvit.bench.presets import preset_config
from jetvit.cli import main
from jetvit.config import load_config
from jetvit.tasks.synthetic import write_coco

transformers = pytest.importorskip("transformers")
pytest.importorskip("pycocotools")
torch.set_num_threads(1)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8)
# Two steps per training phase, one beam round per search step, CPU.
QUICK = {
    "data.holdout": "2",
    "data.workers": "0",
    "supernet.window_size": "2",
    "step1.beam.max_rounds": "1",
    "step2.beam.max_rounds": "1",
    "run.device": "cpu",
}


def sets(assignments: dict[str, str]) -> list[str]:
    return [a for k, v in assignments.items() for a in ("--set", f"{k}={v}")]


def stages(resolution: str) -> dict[str, str]:
    return {
        f"{p}.stages": f"[{{resolution: {resolution}, steps: 2, batch_size: 2}}]"
        for p in ("step1", "step2", "finetune")
    }


def test_shipped_configs_load_and_validate(capsys: pytest.CaptureFixture) -> None:
    cls, det = load_config("dino-v1-cls"), load_config("yolos-det")
    assert cls.teacher == "facebook/dino-vitb16" and cls.score.scorer == "jetvit.tasks.scorers:classification_scorer"
    assert det.teacher == "hustvl/yolos-base" and det.score.scorer == "jetvit.tasks.scorers:detection_scorer"
    assert det.score.options["split"] == "val2017" and det.budget.resolution == [800, 1344]
    # Every resolution of both is a whole number of patches of the released model (presets: no weights needed), and
    # a memory plan is made for them.
    for cfg, name, preset in ((cls, "dino-v1-cls", "dino-b"), (det, "yolos-det", "yolos-b")):
        patch = preset_config(preset).patch_size
        sizes = [cfg.score.resolution, cfg.budget.resolution]
        sizes += [st.resolution for phase in (cfg.step1, cfg.step2, cfg.finetune) for st in phase.stages]
        for size in sizes:
            assert all(side % patch == 0 for side in ([size] if isinstance(size, int) else size)), (name, size)
        assert main(["plan", "--config", name, "--set", f"teacher={preset}", "--gpus", "8"]) == 0, name
    assert "finetune" in capsys.readouterr().out


def search(config: str, overrides: dict[str, str], out: Path) -> None:
    assert main(["search", "--config", config, *sets(overrides), "--out", str(out)]) == 0, config


def aim_at_first_box(yolos, coco: dict) -> None:
    """Make the random YOLOS's heads lean towards the first ground-truth box of the set and its category (small
    weights left on the features), so that its mAP is above 0 and a candidate's features still move it."""
    ann, img = coco["annotations"][0], coco["images"][0]
    x, y, w, h = ann["bbox"]
    W, H = img["width"], img["height"]
    target = torch.tensor([(x + w / 2) / W, (y + h / 2) / H, w / W, h / H])  # relative (cx, cy, w, h)
    with torch.no_grad():
        last = yolos.bbox_predictor.layers[-1]
        last.weight.mul_(0.01)
        last.bias.copy_(torch.logit(target.clamp(1e-3, 1 - 1e-3)))
        cls = yolos.class_labels_classifier.layers[-1]
        cls.weight.mul_(0.01)
        cls.bias.zero_()
        cls.bias[ann["category_id"]] = 5.0


@pytest.fixture(scope="module")
def searches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both searches, started together (they are independent)."""
    root = tmp_path_factory.mktemp("searches")
    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(**TINY, image_size=32), add_pooling_layer=False)
    vit.save_pretrained(root / "vit")
    write_image_folder(root / "cls" / "train", 3, seed=0)
    write_image_folder(root / "cls" / "val", 2, seed=1)
    coco = json.loads(write_coco(root / "coco", split="val", length=4, size=(48, 64)).read_text())
    torch.manual_seed(0)
    yolos_cfg = transformers.YolosConfig(**TINY, image_size=[32, 48], num_detection_tokens=3, num_labels=4)
    yolos = transformers.YolosForObjectDetection(yolos_cfg)
    aim_at_first_box(yolos, coco)
    yolos.save_pretrained(root / "yolos")
    probe = ["probe", "--task", "cls", "--teacher", str(root / "vit"), "--data", str(root / "cls"),
             "--out", str(root / "probe"), "--iterations", "30", "--batch-size", "6", "--crop", "32",
             "--optimizer", "adamw", "--lr", "0.05", "--eval-short-side", "32", "--eval-crop", "32",
             "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(probe) == 0

    cls = {
        "teacher": str(root / "vit"),
        "data.source": str(root / "cls" / "train"),
        "score.resolution": "32",
        "score.batch_size": "2",
        "score.options.data": str(root / "cls"),
        "score.options.head": str(root / "probe"),
        "score.options.size": "null",
        "budget.resolution": "64",
        **stages("32"),
        **QUICK,
    }
    det = {
        "teacher": str(root / "yolos"),
        "data.source": str(root / "coco" / "val"),
        "score.resolution": "[32, 48]",
        "score.batch_size": "2",
        "score.options.data": str(root / "coco"),
        "score.options.split": "val",
        "score.options.size": "null",
        "score.options.short_side": "32",
        "score.options.max_side": "48",
        "budget.resolution": "[64, 96]",
        **stages("[32, 48]"),
        **QUICK,
    }
    search("dino-v1-cls", cls, root / "run-cls")
    search("yolos-det", det, root / "run-det")
    return {"root": root, "cls": root / "run-cls", "det": root / "run-det"}


def evaluate(task: str, run: Path, teacher: Path, extra: list[str], out: Path) -> dict:
    argv = ["eval", "--task", task, "--model", str(run / "model"), "--teacher", str(teacher), *extra, "--out",
            str(out), "--figures", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())["results"]


def test_dino_v1_search_scored_by_top1(searches: dict[str, Path], tmp_path: Path) -> None:
    run, root = searches["cls"], searches["root"]
    summary = json.loads((run / "summary.json").read_text())
    model = jetvit.load(run / "model")
    assert summary["scorer"] == "top1" and model.cfg.family == "vit" and model.arch == summary["arch"]
    assert len(model.arch) == 2 and summary["teacher_arch"] == "FF"
    # The scores the search recorded are `jetvit eval --task cls` on the same probe and val images.
    results = evaluate("cls", run, root / "vit", ["--data", str(root / "cls"), "--head", str(root / "probe")], tmp_path)
    assert summary["teacher_score"] == results["teacher"]["top1"] > 1 / 3  # the probe learnt the colours
    assert summary["final_score"] == results["student"]["top1"]


def test_yolos_search_scored_by_map(searches: dict[str, Path], tmp_path: Path) -> None:
    run, root = searches["det"], searches["root"]
    summary = json.loads((run / "summary.json").read_text())
    model = jetvit.load(run / "model")
    assert summary["scorer"] == "map" and model.cfg.family == "yolos" and model.arch == summary["arch"]
    # the searched model keeps its detection tokens and the inherited heads
    assert model.cfg.num_detection_tokens == 3 and model.detection_head is not None
    logits, boxes = model.predict_detections(torch.zeros(1, 3, 32, 48))
    assert logits.shape == (1, 3, 5) and boxes.shape == (1, 3, 4)
    extra = ["--data", str(root / "coco"), "--split", "val", "--short-side", "32", "--max-side", "48"]
    results = evaluate("det", run, root / "yolos", extra, tmp_path)
    assert summary["teacher_score"] == results["teacher"]["map"] > 0  # the heads aim at the first image's box
    assert summary["final_score"] == results["student"]["map"]
    assert results["student"]["num_images"] == 4 and results["student"]["num_detections"] > 0
