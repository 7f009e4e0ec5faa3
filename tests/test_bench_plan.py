"""`jetvit plan`: the activation estimate against what autograd saves and against measured peaks, the counts against
the models the run builds, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from jetvit.bench.plan import GIB, activation_bytes, block_activation_bytes, format_plan, parse_size, plan_run
from jetvit.cli import main
from jetvit.config import load_config
from jetvit.model import Block, TokenLayout, ViTConfig, rope_tables


def _saved_bytes(blk: Block, x: torch.Tensor, layout: TokenLayout, *, autocast: bool) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one block, leaving out the parameters and
    the bf16 copies autocast makes of them (the plan counts those apart)."""
    shapes = {tuple(p.shape) for p in blk.parameters()} | {tuple(p.shape[::-1]) for p in blk.parameters()}
    own = {p.untyped_storage()._cdata for p in blk.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        weight_copy = t.dtype == torch.bfloat16 and tuple(t.shape) in shapes
        if s._cdata not in own and not weight_copy:
            seen[s._cdata] = s.nbytes()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        blk(x, layout)
    return sum(seen.values())


@pytest.mark.parametrize(
    "grid, overrides",
    [
        ((16, 16), {}),
        ((16, 16), {"mlp": "swiglu"}),
        ((14, 14), {"pos_embed": "learned", "num_registers": 0, "linear": {"conv": "static"}}),
        ((15, 13), {"layerscale": False, "num_registers": 0, "linear": {"conv": "none"}}),  # windows padded
    ],
)
@pytest.mark.parametrize("autocast", [False, True])
def test_block_estimate_matches_what_autograd_saves(grid, overrides, autocast):
    cfg = ViTConfig(dim=128, depth=1, num_heads=4, mlp_hidden=512, window_size=4, **overrides)
    B, N = 2, grid[0] * grid[1] + cfg.num_prefix_tokens
    x = torch.randn(B, N, cfg.dim, requires_grad=True)
    rope = rope_tables(grid, cfg.head_dim, cfg.rope_base, x.device) if cfg.pos_embed == "rope" else None
    layout = TokenLayout(grid, cfg.num_prefix_tokens, rope)
    for kind in "FWL":
        saved = _saved_bytes(Block(cfg, kind).train(), x, layout, autocast=autocast)
        estimate = block_activation_bytes(cfg, kind, batch=B, grid=grid, autocast=autocast)
        assert 0.85 < estimate / saved < 1.15, (kind, estimate, saved)


def _measured_step(cfg: ViTConfig, res: tuple[int, int], batch: int, targets: list[int], checkpointing: bool) -> int:
    from jetvit.bench.memory import MALLOC_ENV

    spec = {"config": cfg.to_dict(), "res": list(res), "batch": batch, "threads": 1,
            "train": {"targets": targets, "checkpointing": checkpointing}}  # fmt: skip
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "jetvit.bench.memory", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["bytes"]


@pytest.mark.parametrize(
    "arch, res, batch, targets, overrides",
    [
        ("LWFL", (224, 224), 2, [0, 1, 2, 3], {"mlp": "swiglu"}),
        ("WWLW", (160, 160), 2, [3], {"window_size": 3}),  # padded windows
    ],
)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_matches_the_measured_peak(arch, res, batch, targets, overrides, checkpointing):
    """One fp32 distillation micro-step on the CPU, its peak resident memory above the model, gradients and optimizer
    (`jetvit.bench.memory`) against the plan's estimate. Margin: the estimate is within -10% .. +30% of the
    measurement (it came out 0 to 18% above, on 9 configurations; the backward's working set was fitted on them)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    kw = {"window_size": 4, **overrides}
    cfg = ViTConfig(dim=192, depth=4, num_heads=3, mlp_hidden=768, arch=arch, **kw)
    measured = _measured_step(cfg, res, batch, targets, checkpointing)
    estimate = activation_bytes(
        cfg, list(arch), targets=targets, batch=batch, size=res, autocast=False, checkpointing=checkpointing
    )
    assert 0.9 < estimate / measured < 1.3, (estimate, measured)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_blockwise_activation_estimate_matches_the_measured_peak(checkpointing):
    """One block-wise supernet step (every candidate of every block on the teacher's states, `BlockwiseStudent`),
    fp32 on the CPU, against the plan's block-wise estimate, within the same -10% .. +30%."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    cfg = ViTConfig(dim=192, depth=4, num_heads=3, mlp_hidden=768, window_size=4)
    kinds = ["LW"] * 4
    spec_train = {"targets": [3], "checkpointing": checkpointing, "blockwise": kinds}
    from jetvit.bench.memory import MALLOC_ENV

    spec = {"config": cfg.to_dict(), "res": [160, 160], "batch": 2, "threads": 1, "train": spec_train}
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "jetvit.bench.memory", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)["bytes"]
    kw = dict(targets=[3], batch=2, size=(160, 160), autocast=False, checkpointing=checkpointing)
    estimate = activation_bytes(cfg, kinds, blockwise=True, **kw)
    assert 0.9 < estimate / measured < 1.3, (estimate, measured)
    assert estimate > activation_bytes(cfg, kinds, **kw)  # every candidate at once against one path


def test_plan_counts_the_models_the_run_trains(tiny_teacher_dir, tiny_model):
    """The Step 1 supernet as the pipeline builds it (the teacher frozen, so its embeddings stay frozen), and the
    fine-tuned student of `jetvit distill`."""
    from jetvit.search.supernet import build_supernet

    cfg = load_config("tiny", [f"teacher={tiny_teacher_dir}", "supernet.sampling=uniform"])
    plan = plan_run(cfg, gpus=2, gpu_memory=GIB)
    assert [p.name for p in plan.phases] == ["step1", "step2", "finetune"]
    teacher = tiny_model().requires_grad_(False)
    step1 = build_supernet(teacher, ["LW"] * 4)
    params = list(step1.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in params)
    p1 = plan.phases[0]
    assert p1.parameters == 4 * sum(p.numel() for p in params)
    assert (p1.gradients, p1.optimizer, p1.ddp_buckets) == (4 * trainable, 8 * trainable, 4 * trainable)
    assert p1.teacher == 4 * sum(p.numel() for p in teacher.parameters())
    micro = [st.micro_batch_size or max(1, st.batch_size // 2) for st in cfg.step1.stages]  # global batch over 2
    assert [(s.resolution, s.micro_batch) for s in p1.stages] == [
        (st.size, m) for st, m in zip(cfg.step1.stages, micro)
    ]
    for phase in plan.phases:
        for st in phase.stages:
            assert 0 < st.activations_checkpointed < st.activations
    assert plan.phases[1].parameters > plan.phases[2].parameters  # two candidates per block against one
    # Block-wise, both supernets hold every candidate's activations at once; the fine-tuning is unchanged.
    bw = plan_run(load_config("tiny", [f"teacher={tiny_teacher_dir}"]), gpus=2)  # the default
    assert "block-wise" in bw.phases[0].model and "block-wise" in bw.phases[1].model
    for a, b in zip(bw.phases[:2], plan.phases[:2]):
        assert all(x.activations > y.activations for x, y in zip(a.stages, b.stages))
    assert bw.phases[2].stages == plan.phases[2].stages

    # a measured front distils its points alone, at `front.batch_size`: a phase of its own
    front = plan_run(
        load_config("tiny", [f"teacher={tiny_teacher_dir}", "supernet.sampling=uniform", "latency.source=measured",
                             "front.steps=3", "front.batch_size=8"]), gpus=2, gpu_memory=GIB,
    )  # fmt: skip
    assert [p.name for p in front.phases] == ["step1", "step2", "front", "finetune"]
    assert [s.micro_batch for s in front.phases[2].stages] == [4] and front.phases[2].parameters == plan.phases[
        2
    ].parameters
    assert [s.resolution for s in front.phases[2].stages] == [cfg.finetune.stages[0].size]
    # the latency criterion's Step 2 (`step2.trade`) holds all three kinds a block: more weights, and block-wise
    # every one's activations; `step2.trade: false` plans the paper's two
    lat = [f"teacher={tiny_teacher_dir}", "latency.source=measured", "objective.criterion=latency"]
    traded = plan_run(load_config("tiny", lat), gpus=2).phases[1]
    paper = plan_run(load_config("tiny", [*lat, "step2.trade=false"]), gpus=2).phases[1]
    assert traded.model.startswith("supernet L/W/F") and paper.model.startswith("supernet (L|W)/F")
    assert traded.parameters > paper.parameters == bw.phases[1].parameters
    assert all(x.activations > y.activations for x, y in zip(traded.stages, paper.stages))

    distill = plan_run(cfg, gpus=1, gpu_memory=GIB, arch="lwlf")
    (ft,) = distill.phases
    student = tiny_model("LWLF")
    assert ft.model == "architecture LWLF" and ft.parameters == 4 * sum(p.numel() for p in student.parameters())
    assert ft.ddp_buckets == 0 and ft.weight_copies > 0
    fp32 = plan_run(load_config("tiny", [f"teacher={tiny_teacher_dir}", "run.precision=fp32"]), arch="LWLF")
    assert fp32.phases[0].weight_copies == 0 and fp32.phases[0].stages[0].activations > ft.stages[0].activations


def test_plan_with_fsdp_counts_each_process_shard(tiny_teacher_dir):
    """`run.strategy: fsdp` on 4 processes: a quarter of the parameters, gradients and AdamW states, no DDP buckets
    nor autocast copies but the gathered blocks, a bf16 teacher; on one process, the plan of a ddp run."""
    base = [f"teacher={tiny_teacher_dir}"]
    ddp = plan_run(load_config("tiny", base), gpus=4, gpu_memory=GIB)
    fsdp = plan_run(load_config("tiny", [*base, "run.strategy=fsdp"]), gpus=4, gpu_memory=GIB)
    for d, f in zip(ddp.phases, fsdp.phases, strict=True):
        quarter = tuple(-(-n // 4) for n in (d.parameters, d.gradients, d.optimizer))
        assert (f.parameters, f.gradients, f.optimizer) == quarter
        assert f.ddp_buckets == f.weight_copies == 0 < f.gathered
        assert 2 * f.teacher == d.teacher and f.stages == d.stages
    assert "FSDP gathered" in format_plan(fsdp) and "run.strategy: fsdp" in format_plan(fsdp)
    one = plan_run(load_config("tiny", [*base, "run.strategy=fsdp"]), gpus=1, gpu_memory=GIB)
    assert one.phases == plan_run(load_config("tiny", base), gpus=1, gpu_memory=GIB).phases


def test_plan_command_for_a_preset_teacher_without_weights(capsys):
    """DINOv3-7B from its preset: no file, built on the meta device; 8 x 80 GiB do not hold its separate supernet
    replicated."""
    rc = main(["plan", "--config", "dinov3", "--set", "teacher=dinov3-7b", "--gpus", "8", "--gpu-memory", "80GiB"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "6716.0M parameters" in out and "8 process(es) with 80.00 GiB" in out
    for phase in ("step1:", "step2:", "finetune:"):
        assert phase in out
    assert "does not fit: step1, step2, finetune" in out
    # Sharded, with activation checkpointing, they do (the README's 7B command).
    args = ["plan", "--config", "dinov3", "--set", "teacher=dinov3-7b", "--set", "run.strategy=fsdp", "--gpus", "8"]
    assert main(args) == 0
    assert "with activation checkpointing: every phase fits" in capsys.readouterr().out
    rc = main(["plan", "--config", "dinov3", "--set", "teacher=dinov3-s", "--arch", "L" * 12, "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert rc == 0 and [p["name"] for p in plan["phases"]] == ["finetune"]
    assert plan["phases"][0]["fits_plain"] and plan["phases"][0]["peak_checkpointed"] < plan["phases"][0]["peak_plain"]


def test_plan_command_errors_name_the_problem(capsys):
    assert main(["plan", "--config", "tiny", "--gpu-memory", "lots"]) == 2
    assert "'lots'" in capsys.readouterr().err
    assert main(["plan", "--config", "tiny", "--gpus", "0"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["plan", "--config", "tiny", "--arch", "LW"]) == 2
    assert "8 blocks" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("80GiB") == 80 * GIB == parse_size("80") == parse_size("80g")
    assert parse_size("141GB") == 141 * 10**9 and parse_size("512 MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="80GiB"):
        parse_size("eighty")
