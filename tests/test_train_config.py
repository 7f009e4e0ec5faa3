"""Typed run configs: YAML + overrides, unknown keys and bad values name the key, shipped configs load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import jetvit
from jetvit.config import Config, dump_yaml, load_config
from jetvit.model import LinearAttnConfig, ViTConfig
from jetvit.train.config import StageConfig


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = """
teacher: /some/teacher
step1:
  stages:
    - {resolution: 32, steps: 4, batch_size: 4}
"""


def test_load_and_override(tmp_path):
    cfg = load_config(
        _write(tmp_path, BASE), ["step1.stages.0.steps=9", "step2.beam.width=5", "distill.targets=[1, 3]"]
    )
    assert isinstance(cfg, Config)
    assert isinstance(cfg.step1.stages[0], StageConfig)
    assert cfg.step1.stages[0].steps == 9 and cfg.step1.stages[0].size == (32, 32)
    assert cfg.step2.beam.width == 5
    assert cfg.distill.targets == [1, 3]
    assert cfg.supernet.linear == LinearAttnConfig()  # the library's L-block defaults unless set
    assert cfg.step1.stages[0].lr == pytest.approx(1e-4)  # default filled in
    # The resolved YAML reloads to the same config.
    again = load_config(_write(tmp_path, dump_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("step1.beam.widht=3", "unknown config key 'step1.beam.widht'; accepted keys here: width"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("step1.stages.0.schedule=step", "step1.stages.0.schedule 'step' is not one of cosine, linear, constant"),
        ("step1.stages.0.steps=many", "step1.stages.0.steps: expected an integer"),
        ("step1.stages.3.steps=1", "'step1.stages.3'"),
        ("distill.targets=middle", "distill.targets 'middle' is not one of last, all, dpt or a list of int"),
        ("distill.targets=[1, x]", "distill.targets.1: expected an integer, got 'x'"),  # the list option's error
        ("distill.targets=[]", "distill.targets is an empty list"),
        ("distill.inherit=attn", "distill.inherit 'attn' is not one of all, mlp"),
        ("distill.depth_loss=l1", "distill.depth_loss 'l1' is not one of ssi_mse, ssi_gm"),
        ("step1.stages.0.resolution=big", "step1.stages.0.resolution 'big' is not an integer or a list of int"),
        ("step1.stages.0.lr=x", "step1.stages.0.lr: expected a number, got 'x'"),
        ("run.device=tpu", "run.device 'tpu' is not one of auto, cpu, cuda"),
        ("run.device=true", "run.device True is not one of auto, cpu, cuda"),  # a YAML bool is not a choice
        ("run.precision=fp16", "run.precision 'fp16' is not one of auto, fp32, bf16"),
        ("run.keep_checkpoints=some", "run.keep_checkpoints 'some' is not one of last, all, none"),
        ("budget.max_gflops=lots", "budget.max_gflops 'lots' is not a number or null"),
        ("budget.max_flops_ratio=1.5", "budget.max_flops_ratio"),
        ("arch=LXW", "arch 'LXW'"),
        ("novalue", "not of the form key=value"),
        ("supernet.linear.cnov=static", "unknown config key 'supernet.linear.cnov'"),
        ("supernet.linear.conv=sideways", "supernet.linear.conv 'sideways' is not one of none, static, dynamic"),
        ("supernet.linear.kernel=elu", "supernet.linear.kernel 'elu' is not one of relu, focus"),
        ("run.strategy=zero3", "run.strategy 'zero3' is not one of ddp, fsdp"),
        ("run.compile=model", "run.compile 'model' is not one of none, blocks"),
        ("data.workers=-1", "data.workers must be >= 0 or null"),
        ("supernet.sampling=random", "supernet.sampling 'random' is not one of uniform, balanced, blockwise"),
        ("objective.criterion=speed", "objective.criterion 'speed' is not one of paper, latency"),
        ("objective.tolerance=-0.1", "objective.tolerance must be >= 0"),
        ("budget.max_latency_ratio=1.5", "budget.max_latency_ratio must be in (0, 1]"),
        ("budget.max_latency_ms=0", "budget.max_latency_ms must be > 0 or null"),
        ("latency.source=guessed", "latency.source 'guessed' is not one of measured, predicted, none"),
        ("latency.source=predicted", "latency.source: predicted needs latency.device"),
        ("latency.resolution=0", "latency.resolution must be a positive int or [H, W]"),
        ("front.max_points=0", "front.max_points >= 1"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(_write(tmp_path, BASE), [override])


def test_latency_objectives_need_a_latency_table(tmp_path):
    for override in ("objective.criterion=latency", "budget.max_latency_ms=10", "budget.max_latency_ratio=0.5"):
        with pytest.raises(ValueError, match="needs a latency table; latency.source is none"):
            load_config(_write(tmp_path, BASE), ["latency.source=none", override])
    cfg = load_config(_write(tmp_path, BASE), ["latency.source=predicted", "latency.device=h100"])
    assert cfg.latency.device == "h100" and cfg.objective.criterion == "paper"


def test_errors_inside_a_list_of_stages_in_the_file_name_the_item(tmp_path):
    head = "teacher: /t\nstep1:\n  stages:\n    - {resolution: 32, steps: 4, batch_size: 4}\n"
    with pytest.raises(ValueError, match=r"^unknown config key 'step1.stages.1.lrr'; accepted keys here: resolution"):
        load_config(_write(tmp_path, head + "    - {resolution: 32, steps: 4, batch_size: 4, lrr: 1}\n"))
    with pytest.raises(ValueError, match=r"^step1.stages.1.steps: expected an integer, got 'many'$"):
        load_config(_write(tmp_path, head + "    - {resolution: 32, steps: many, batch_size: 4}\n"))


def test_union_values_and_list_item_overrides(tmp_path):
    cfg = load_config(
        _write(tmp_path, BASE),
        ["step1.stages.0.resolution=[32, 48]", "step1.stages.0.schedule=linear", "distill.targets=dpt"],
    )
    assert cfg.step1.stages[0].size == (32, 48) and cfg.step1.stages[0].schedule == "linear"
    assert cfg.step1.stages[0].steps == 4  # the other keys of the overridden item are kept
    assert cfg.distill.targets == "dpt"
    cfg = load_config(_write(tmp_path, BASE), ["score.options={k: [1, {a: b}]}", "run.device=cpu"])
    assert cfg.score.options == {"k": [1, {"a": "b"}]} and cfg.run.device == "cpu"


def test_choices_are_checked_for_configs_made_in_python_too():
    with pytest.raises(ValueError, match="linear.kernel 'elu' is not one of relu, focus"):
        LinearAttnConfig(kernel="elu")
    with pytest.raises(ValueError, match="mlp 'relu' is not one of gelu, swiglu"):
        ViTConfig(mlp="relu")


def test_a_choice_is_its_value_and_type():
    from typing import Literal

    from jetvit._config import convert

    assert convert(2, Literal[1, 2] | None, "k") == 2
    with pytest.raises(ValueError, match="k True is not one of 1, 2 or null"):
        convert(True, Literal[1, 2] | None, "k")  # True == 1 in Python, but a YAML `true` is not the choice 1
    with pytest.raises(ValueError, match="k 1.0 is not one of 1, 2"):
        convert(1.0, Literal[1, 2], "k")


def test_missing_teacher_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing config key 'teacher'"):
        load_config(_write(tmp_path, "data: {source: skimage}\n"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


# Every config shipped with the package, found on disk: a new one is tested without being listed here.
SHIPPED = sorted(p.stem for p in (Path(jetvit.__file__).parent / "configs").glob("*.yaml"))


def test_the_shipped_configs_are_found():
    assert {"tiny", "demo", "dinov3"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    cfg = load_config(name, ["teacher=/x"])
    assert cfg.step1.stages and cfg.step2.stages and cfg.finetune.stages


def test_shipped_schedules_match_the_supplementary():
    d = load_config("dinov3", ["teacher=/x"])
    assert [(s.size, s.steps, s.batch_size) for s in d.step1.stages] == [
        ((256, 256), 3000, 1024),
        ((512, 512), 5000, 1024),
    ]
    assert [(s.size, s.steps) for s in d.step2.stages] == [((512, 512), 5000)]
    assert [(s.size, s.steps) for s in d.finetune.stages] == [((1024, 1024), 10000)]
    assert d.distill.targets == "last"
    a = load_config("depth_anything_v2", ["teacher=/x"])
    assert [(s.size, s.steps) for s in a.step1.stages] == [((518, 518), 5000)]
    assert [(s.size, s.steps) for s in a.step2.stages] == [((518, 518), 5000)]
    assert [(s.size, s.steps) for s in a.finetune.stages] == [((1022, 1022), 10000)]
    assert a.distill.targets == "dpt" and a.finetune.depth_weight > 0


def test_linear_block_options_override(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["supernet.linear.rope=true", "supernet.linear.conv=static"])
    assert cfg.supernet.linear == LinearAttnConfig(rope=True, conv="static")
    assert load_config(_write(tmp_path, dump_yaml(cfg))) == cfg


def test_a_run_written_before_a_key_existed_still_resumes(tmp_path):
    import yaml

    from jetvit.rundir import CONFIG_NAME, check_out_dir

    cfg = load_config("tiny")
    old = yaml.safe_load(dump_yaml(cfg))
    del old["distill"]["depth_loss"]  # a key newer than the run directory, at its default
    (tmp_path / CONFIG_NAME).write_text(yaml.safe_dump(old))
    check_out_dir(tmp_path, cfg)  # resumes
    changed = load_config("tiny", ["distill.depth_loss=ssi_gm"])
    with pytest.raises(ValueError, match="differs in: distill.depth_loss"):
        check_out_dir(tmp_path, changed)


def test_stage_for_steps_keeps_the_warmup_but_at_most_a_tenth_of_the_steps():
    stage = StageConfig(resolution=128, steps=450, batch_size=8, lr=5e-4, warmup_steps=20)
    longer = stage.for_steps(600, batch_size=16)
    assert (longer.steps, longer.warmup_steps, longer.batch_size, longer.lr) == (600, 20, 16, 5e-4)
    assert stage.for_steps(100).warmup_steps == 10  # a tenth of 100
    assert stage.for_steps(4).warmup_steps == 1  # never 0 where the stage had a warm-up
    assert dataclasses.replace(stage, warmup_steps=0).for_steps(100).warmup_steps == 0
    assert stage.steps == 450  # the original is untouched


def test_loader_workers_default_to_none_on_the_cpu_and_a_few_on_cuda(tmp_path):
    data = load_config(_write(tmp_path, BASE)).data
    assert data.workers is None
    assert data.resolved_workers("cpu") == 0
    assert 1 <= data.resolved_workers("cuda") <= 4
    assert data.resolved_workers("cuda", processes_per_host=10**6) == 1  # at least one, however many processes
    assert load_config(_write(tmp_path, BASE), ["data.workers=3"]).data.resolved_workers("cpu") == 3
