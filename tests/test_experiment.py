"""One experiment, built once (`jetvit.experiment`): the students' config derived in one place, no files written, and
the FLOPs a search, `jetvit distill` and `jetvit plan` report equal to the delivered model's own count."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jetvit
from jetvit.config import load_config
from jetvit.experiment import Experiment
from jetvit.model import HybridViT
from jetvit.search.supernet import student_config

TESTS = Path(__file__).resolve().parent
# The tiny teacher's windows are 2 patches (`tiny_model`); the run asks for 3, whose padded grid costs differently.
WINDOW = 3
FAST = [
    "step1.stages=[{resolution: 32, steps: 2, batch_size: 2}]",
    "step2.stages=[{resolution: 32, steps: 2, batch_size: 2}]",
    "finetune.stages=[{resolution: 32, steps: 2, batch_size: 2}]",
    "step1.beam.max_rounds=1",
    "step2.beam.max_rounds=1",
    f"supernet.window_size={WINDOW}",
    "supernet.linear.conv=static",
    "budget.resolution=88",  # an 11x11 grid: windows of 2 and 3 pad it differently
]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "jetvit", *args], env=env, capture_output=True, text=True, timeout=300)


def sets(teacher: Path, *extra: str) -> list[str]:
    return [a for s in [f"teacher={teacher}", *FAST, *extra] for a in ("--set", s)]


def test_build_writes_nothing_and_derives_the_students_config_once(tiny_teacher_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", [f"teacher={tiny_teacher_dir}", *FAST])
    exp = Experiment.build(cfg, search=True)
    assert list(tmp_path.iterdir()) == []  # side-effect free: no run directory, no file
    teacher_cfg = jetvit.load(tiny_teacher_dir).cfg
    assert exp.teacher.cfg == teacher_cfg  # the teacher's own config is not rewritten with the run's options
    assert exp.student_cfg == student_config(teacher_cfg, cfg.supernet)
    assert exp.student_cfg.window_size == WINDOW != teacher_cfg.window_size
    assert exp.student_cfg.linear.conv == "static" != teacher_cfg.linear.conv
    # Every student of the run takes its options from there: converted students and supernets alike.
    student = exp.student("LWFL")
    assert student.cfg.window_size == WINDOW and student.cfg.linear == cfg.supernet.linear
    assert student.blocks[1].attn.window_size == WINDOW
    net = exp.supernet(exp.teacher, ["LW"] * 4)
    assert net.cfg.window_size == WINDOW and net.blocks[0].candidates["W"].attn.window_size == WINDOW
    assert exp.flops("LWFL") == student.flops(88, 88)["total"]
    assert exp.flops("LWFL") != jetvit.convert(exp.teacher, "LWFL").flops(88, 88)["total"]  # the teacher's window


def test_build_refuses_with_the_key(tiny_teacher_dir):
    cfg = load_config("tiny", [f"teacher={tiny_teacher_dir}", "score.resolution=30"])
    with pytest.raises(ValueError, match="score.resolution"):
        Experiment.build(cfg)
    with pytest.raises(ValueError, match="7 blocks|depth|LLLLLLL"):
        Experiment.build(dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, resolution=32)), arch="L" * 7)


def test_search_distill_and_plan_report_the_models_flops(tiny_teacher_dir, tmp_path):
    """With `supernet.window_size` other than the teacher's, the FLOPs of the summary (and of `jetvit plan`) are
    those of the model the run delivers, counted by the model itself."""
    search = tmp_path / "search"
    proc = cli("search", "--config", "tiny", *sets(tiny_teacher_dir), "--out", str(search))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((search / "summary.json").read_text())
    model = jetvit.load(search / "model")
    H, W = summary["flops_resolution"]
    assert (H, W) == (88, 88) and model.cfg.window_size == WINDOW
    assert summary["flops"] == model.flops(H, W)["total"]
    step1 = HybridViT(dataclasses.replace(model.cfg, arch=summary["step1_arch"]))
    assert summary["step1_flops"] == step1.flops(H, W)["total"]

    arch = "WWLF"  # W blocks, whose cost depends on the window
    distill = tmp_path / "distill"
    proc = cli("distill", "--config", "tiny", *sets(tiny_teacher_dir), "--arch", arch, "--out", str(distill))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((distill / "summary.json").read_text())
    assert summary["flops"] == jetvit.load(distill / "model").flops(88, 88)["total"]

    proc = cli("plan", "--config", "tiny", *sets(tiny_teacher_dir), "--arch", arch, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["flops"] == summary["flops"] and plan["teacher_flops"] == summary["teacher_flops"]
    proc = cli("plan", "--config", "tiny", *sets(tiny_teacher_dir), "--arch", arch)
    assert f"architecture {summary['flops'] / 1e9:.4g} G" in proc.stdout


def test_supernet_phase_follows_the_sampling_and_the_block_wise_input(tiny_teacher_dir):
    """`supernet.sampling` and `supernet.blockwise_input` decide the phase: a drawn path per step for the single-path
    ways and for block-wise on the student's inputs (the path that feeds each block, drawn as a uniform one), none
    for block-wise on the teacher's."""
    from jetvit.search.supernet import sample_path

    def phase(*extra):
        cfg = load_config("tiny", [f"teacher={tiny_teacher_dir}", *FAST, *extra])
        return Experiment.build(cfg).supernet_phase("step1", ["LW"] * 4, cfg.step1.stages)

    teacher_inputs = phase("supernet.sampling=blockwise", "supernet.blockwise_input=teacher")
    assert teacher_inputs.blockwise and teacher_inputs.choose_path is None
    assert teacher_inputs.blockwise_input == "teacher"
    student = phase("supernet.sampling=blockwise")  # the default input
    assert student.blockwise and student.blockwise_input == "student" and student.choose_path is not None
    net = Experiment.build(load_config("tiny", [f"teacher={tiny_teacher_dir}", *FAST])).supernet(
        jetvit.load(tiny_teacher_dir), ["LW"] * 4
    )
    seed = load_config("tiny", [f"teacher={tiny_teacher_dir}"]).run.seed
    assert [student.choose_path(net, s) for s in range(5)] == [
        sample_path(["LW"] * 4, seed=seed, phase="step1", step=s) for s in range(5)
    ]
    uniform = phase("supernet.sampling=uniform")
    assert not uniform.blockwise and uniform.choose_path is not None


def test_the_front_scores_with_its_own_options(tiny_teacher_dir, monkeypatch):
    """`front.score_options`, set over `score.options`, make the front's scorer (the search's without them); options
    a scorer does not take are refused under their own key."""
    monkeypatch.syspath_prepend(str(TESTS))  # the plugin scorer
    base = [f"teacher={tiny_teacher_dir}", "score.scorer=test_search_plugin_scorer:factory"]
    assert Experiment.build(load_config("tiny", base)).front_scorer is None
    exp = Experiment.build(load_config("tiny", [*base, "front.score_options={metric: cosine}"]))
    assert (exp.scorer.name, exp.front_scorer.name) == ("plugin_neg_feature_mse", "plugin_feature_cosine")
    assert exp.front_scorer(exp.teacher) == pytest.approx(1.0, abs=1e-6) and exp.scorer(exp.teacher) == 0.0
    with pytest.raises(ValueError, match=r"front.score_options \['samples'\] are not used by the built-in"):
        Experiment.build(load_config("tiny", [f"teacher={tiny_teacher_dir}", "front.score_options.samples=128"]))
