"""The built-in teacher: the pretraining script end to end on a tiny setting (slow) and its reproducibility, and the
committed teacher: its record, and its score reproduced by `jetvit eval` (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jetvit
from jetvit.demo.teacher import ASSET_DIR, TEACHER_JSON, load_builtin
from jetvit.tasks import synthetic

ROOT = Path(__file__).resolve().parent.parent
TINY = ["dim=32", "depth=2", "num_heads=2", "mlp_hidden=64", "size=32", "steps=3", "batch_size=2", "warmup=1",
        "eval_every=2", "val_samples=4", "monitor_samples=2", "window_size=2"]  # fmt: skip


@pytest.mark.slow
def test_pretraining_script_runs_end_to_end_with_its_control(tmp_path):
    out, control = tmp_path / "teacher", tmp_path / "control"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pretrain_teacher.py"), "--out", str(out),
           "--control-out", str(control), "--no-progress"] + [a for kv in TINY for a in ("--set", kv)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, text=True)
    record = json.loads((out / TEACHER_JSON).read_text())
    assert record["arch"] == "FF" and record["control"]["arch"] == "WW"
    assert 0 <= record["val"]["miou"] <= 1 and record["val"]["samples"] == 4
    assert record["control"]["miou_gap"] == pytest.approx(record["val"]["miou"] - record["control"]["val"]["miou"])
    assert [row["step"] for row in record["history"]] == [2, 3]
    model, seg_head, depth_head, rec = load_builtin(out)
    assert model.arch == "FF" and seg_head.cfg.num_classes == synthetic.NUM_CLASSES and depth_head.cfg.num_classes == 1
    assert jetvit.load(control).arch == "WW"
    # --rescore recomputes the recorded scores without training: the same numbers come back
    rescore = [sys.executable, str(ROOT / "benchmarks" / "pretrain_teacher.py"), "--out", str(out), "--rescore",
               "--control-from", str(control)]  # fmt: skip
    subprocess.run(rescore, check=True, cwd=tmp_path, capture_output=True, text=True)
    again = json.loads((out / TEACHER_JSON).read_text())
    assert again["val"]["miou"] == pytest.approx(record["val"]["miou"], abs=1e-9)
    assert again["control"]["miou_gap"] == pytest.approx(record["control"]["miou_gap"], abs=1e-9)


def test_pretraining_is_reproducible_from_the_seed(tmp_path):
    from jetvit.demo.teacher import TeacherRecipe, train_teacher

    values = {k: v for k, v in (kv.split("=") for kv in TINY)}
    recipe = TeacherRecipe(**{k: int(v) for k, v in values.items()}, lr=1e-3)
    train_teacher(recipe, tmp_path / "a", progress=False)
    train_teacher(recipe, tmp_path / "b", progress=False)
    a, b = jetvit.load(tmp_path / "a").state_dict(), jetvit.load(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


NO_ASSET = pytest.mark.skipif(
    not (ASSET_DIR / TEACHER_JSON).is_file(), reason="no committed teacher (run `make teacher`)"
)


@NO_ASSET
def test_committed_teacher_is_the_recorded_one():
    record = json.loads((ASSET_DIR / TEACHER_JSON).read_text())
    model = jetvit.load(ASSET_DIR)
    assert model.arch == record["arch"] and model.cfg.img_size == record["val"]["resolution"]
    assert model.flops(128, 128)["total"] > 0 and model.cfg.dim >= 192 and model.cfg.depth >= 8
    # the task needs global context: the all-window control trained the same way scores clearly lower
    assert record["control"]["arch"] == "W" * model.cfg.depth
    assert record["control"]["miou_gap"] > 0.05


@pytest.mark.slow
@NO_ASSET
def test_committed_teacher_score_is_reproduced_by_jetvit_eval(tmp_path):
    record = json.loads((ASSET_DIR / TEACHER_JSON).read_text())
    val = record["val"]
    synthetic.write_folder(tmp_path / "data" / "val", split="val", length=val["samples"], size=val["resolution"])
    cmd = [sys.executable, "-m", "jetvit", "eval", "--model", str(ASSET_DIR), "--task", "seg", "--data",
           str(tmp_path / "data"), "--num-classes", str(synthetic.NUM_CLASSES), "--head", str(ASSET_DIR / "seg_head"),
           "--out", str(tmp_path / "eval"), "--figures", "0", "--no-progress", "--device", "cpu"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert results["student"]["miou"] == pytest.approx(val["miou"], abs=1e-4)
