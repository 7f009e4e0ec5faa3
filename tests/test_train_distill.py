"""Distillation pieces: targets, losses, schedules, the FLOP budget, and a phase with the depth loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from jetvit.config import load_config
from jetvit.conversion import convert
from jetvit.runtime import Runtime
from jetvit.search.budget import FlopBudget
from jetvit.search.supernet import sample_path
from jetvit.train.config import StageConfig
from jetvit.train.data import ImageSet, SampleImages
from jetvit.train.distill import DistillSetup, Phase, lr_at, resolve_targets, train_phase
from jetvit.train.losses import ssi_mse

HEAD = {"in_dim": 32, "features": 16, "out_channels": [8, 16, 32, 32], "layers": [0, 1, 2, 3]}


@pytest.fixture
def tiny(tiny_model):
    """`tiny(**overrides)`: the shared tiny model, frozen as a teacher."""
    return lambda **kw: tiny_model(**kw).requires_grad_(False)


def test_targets(tiny):
    plain, with_head = tiny(), tiny(depth_head=HEAD)
    assert resolve_targets("last", plain) == [3]
    assert resolve_targets("all", plain) == [0, 1, 2, 3]
    assert resolve_targets("dpt", with_head) == [0, 1, 2, 3]
    assert resolve_targets("dpt", tiny(depth=12)) == [2, 5, 8, 11]  # the DAv2 pattern without a head to ask
    assert resolve_targets([1, -1], plain) == [1, 3]
    with pytest.raises(ValueError, match=r"\[7\]"):
        resolve_targets([0, 7], plain)


def test_ssi_mse_ignores_scale_and_shift():
    target = torch.rand(2, 8, 8)
    assert ssi_mse(3.0 * target + 0.5, target) < 1e-10
    assert ssi_mse(torch.rand(2, 8, 8), target) > 0.1


def test_lr_schedules():
    st = StageConfig(resolution=32, steps=10, batch_size=1, lr=1.0, warmup_steps=2, final_lr_ratio=0.1)
    assert [lr_at(st, s) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(st, 2) == pytest.approx(1.0) and lr_at(st, 10) == pytest.approx(0.1)
    assert lr_at(dataclasses.replace(st, schedule="linear"), 6) == pytest.approx(0.55)
    assert lr_at(dataclasses.replace(st, schedule="constant"), 9) == 1.0


def test_paths_depend_only_on_seed_phase_and_step():
    choices = ["LW"] * 6
    a = [sample_path(choices, seed=0, phase="step1", step=s) for s in range(20)]
    assert a == [sample_path(choices, seed=0, phase="step1", step=s) for s in range(20)]
    assert a != [sample_path(choices, seed=1, phase="step1", step=s) for s in range(20)]


def test_flop_budget(tiny):
    teacher = tiny()
    cfg = load_config("tiny", ["teacher=x", "budget.resolution=64", "budget.max_flops_ratio=0.9"])
    budget = FlopBudget.from_config(teacher.cfg, cfg.budget)
    assert budget.teacher_flops == teacher.flops(64, 64)["total"]
    assert budget.reason("LLLL") is None
    assert "over the budget" in budget.reason("FFFF")
    assert budget.flops("LLWF") == convert(teacher, "LLWF").flops(64, 64)["total"]


def test_phase_with_depth_pseudo_labels_and_resume(tiny, tmp_path):
    teacher = tiny(depth_head=HEAD)
    cfg = load_config("tiny", ["teacher=x", "run.checkpoint_every=1", "run.log_every=1"])
    stages = [StageConfig(resolution=32, steps=2, batch_size=2, lr=1e-3)]
    images = ImageSet(SampleImages(("astronaut", "coffee", "chelsea")), [0, 1, 2])
    rt = Runtime(device=torch.device("cpu"))

    def setup(t, targets, depth_teacher=None):
        return DistillSetup(
            teacher=t, images=images, targets=targets, data=cfg.data, distill=cfg.distill, optim=cfg.optim,
            run=cfg.run, rt=rt, depth_teacher=depth_teacher,
        )  # fmt: skip

    def run(ckpt):
        student = convert(teacher, "LWLF").requires_grad_(True)
        phase = Phase("finetune", stages, depth_weight=1.0)
        s = train_phase(phase, student, setup(teacher, [0, 1, 2, 3], depth_teacher=teacher), ckpt_path=ckpt)
        return student, s

    student, summary = run(tmp_path / "a.pt")
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"]))
    head_before = teacher.depth_head.projects[0].weight
    assert not torch.equal(student.depth_head.projects[0].weight, head_before)  # the depth loss trains the head
    again, summary2 = run(tmp_path / "a.pt")  # a finished phase: loads the final weights, trains nothing
    assert summary2 == summary
    for k, v in student.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="depth head"):
        phase = Phase("x", stages, depth_weight=1.0)
        train_phase(phase, convert(tiny(), "LLLL"), setup(tiny(), [3]), ckpt_path=tmp_path / "b.pt")


def _grads_and_saved(student, teacher, x, targets, *, checkpointing: bool):
    """Parameter gradients of the feature loss, and the number of tensors autograd kept outside checkpointed
    blocks (the checkpoint keeps its own)."""
    from jetvit.model import token_features
    from jetvit.train.distill import DistillStudent, feature_loss

    student.zero_grad(set_to_none=True)
    student.set_grad_checkpointing(checkpointing)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        feats, _ = DistillStudent(student, targets, with_depth=False)(x)
        loss = feature_loss(feats, token_features(teacher.block_features(x, targets)))
    loss.backward()
    student.set_grad_checkpointing(False)
    return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}, len(saved)


@pytest.mark.parametrize("supernet", [False, True])
def test_activation_checkpointing_keeps_gradients(tiny, supernet):
    """Checkpointed blocks (plain blocks, or the supernet's switchable ones) give the same gradients, and autograd
    keeps far fewer tensors outside them."""
    from jetvit.search.supernet import build_supernet, set_arch

    teacher = tiny(random_weights=True)
    if supernet:
        student = build_supernet(teacher, ["LW", "LWF", "WL", "LF"]).train()
        set_arch(student, "LFWF")
    else:
        student = convert(teacher, "LWFL").train()
    with torch.no_grad():  # a non-zero convolution, so that its gradient path is exercised too
        for p in student.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    plain, saved_plain = _grads_and_saved(student, teacher, x, [1, 3], checkpointing=False)
    ckpt, saved_ckpt = _grads_and_saved(student, teacher, x, [1, 3], checkpointing=True)
    assert plain.keys() == ckpt.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-8, msg=name)
    assert saved_ckpt < saved_plain / 4, (saved_ckpt, saved_plain)
    assert not student.grad_checkpointing and not teacher.grad_checkpointing


def _supernet_setup(tiny):
    from jetvit.search.supernet import build_supernet

    teacher = tiny(random_weights=True)
    cfg = load_config("tiny", ["teacher=x", "run.log_every=1", "run.checkpoint_every=100"])
    images = ImageSet(SampleImages(("astronaut", "coffee", "chelsea")), [0, 1, 2])
    setup = DistillSetup(
        teacher=teacher, images=images, targets=[3], data=cfg.data, distill=cfg.distill, optim=cfg.optim,
        run=cfg.run, rt=Runtime(device=torch.device("cpu")),
    )  # fmt: skip
    supernet = build_supernet(teacher, ["LW"] * 4).requires_grad_(True).train()
    return teacher, supernet, setup


def _changed(before: dict, model: torch.nn.Module) -> set[str]:
    """The candidates (block.kind) whose qkv weight moved."""
    after = model.state_dict()
    return {
        ".".join(k.split(".")[1:4:2])
        for k, v in before.items()
        if k.endswith("attn.qkv.weight") and not torch.equal(v, after[k])
    }


def test_blockwise_training_trains_every_candidate_each_step(tiny, tmp_path):
    """Block-wise distillation: one step moves every candidate of every block; single-path sampling only the
    sampled path's. The block-wise loss is each candidate's error on its teacher block's own input and output."""
    from jetvit.search.supernet import PathSampler
    from jetvit.train.distill import BlockwiseStudent

    teacher, supernet, setup = _supernet_setup(tiny)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states, layout = teacher.residual_states(x)
        # the states are the blocks' outputs: the last one, normed, is the feature distillation matches
        assert torch.allclose(teacher.norm(states[-1]), teacher.token_features(x, [3])[0], atol=1e-5)
        loss0 = BlockwiseStudent(supernet)(states, layout)
    assert loss0 > 0  # the L candidates differ from their teacher blocks
    stages = [StageConfig(resolution=32, steps=1, batch_size=2, lr=1e-3)]
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    summary = train_phase(Phase("step1", stages, blockwise=True), supernet, setup, ckpt_path=tmp_path / "b.pt")
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    assert _changed(before, supernet) == {f"{i}.{k}" for i in range(4) for k in "LW"}

    teacher, supernet, setup = _supernet_setup(tiny)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    sampler = PathSampler(["LW"] * 4, seed=0, phase="step1")
    train_phase(Phase("step1", stages, choose_path=sampler), supernet, setup, ckpt_path=tmp_path / "u.pt")
    path = sample_path(["LW"] * 4, seed=0, phase="step1", step=0)
    assert _changed(before, supernet) == {f"{i}.{k}" for i, k in enumerate(path)}
    with pytest.raises(ValueError, match="trains a supernet"):
        BlockwiseStudent(convert(teacher, "LLLL"))


def test_blockwise_on_the_students_inputs(tiny, tmp_path):
    """`blockwise_input: student`: block i's candidates take block i - 1's active candidate's output (the step's
    drawn path), detached, and learn the teacher block's output; block 0 takes the embedded image as on the teacher's
    inputs. Every candidate still trains at every step; without a drawn path the phase is refused."""
    import torch.nn.functional as F

    from jetvit.search.supernet import PathSampler, set_arch
    from jetvit.train.distill import BlockwiseStudent

    teacher, supernet, setup = _supernet_setup(tiny)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    set_arch(supernet, "LWWL")
    with torch.no_grad():
        states, layout = teacher.residual_states(x)
        loss = BlockwiseStudent(supernet, "student")(states, layout)
        # by hand: the path's own running state feeds every candidate of the next block
        m, h, losses = supernet, states[0], []
        for i, blk in enumerate(m.blocks):
            target = m.norm(states[i + 1])
            outs = {k: m.run_block(i, c, h, layout) for k, c in blk.candidates.items()}
            losses += [F.mse_loss(m.norm(o), target) for o in outs.values()]
            h = outs["LWWL"[i]]
        assert torch.allclose(loss, torch.stack(losses).mean(), rtol=1e-5)
        assert not torch.allclose(loss, BlockwiseStudent(supernet, "teacher")(states, layout))
    # the gradient of a block's loss stops at its input: block 0's candidates learn from block 0's loss alone
    m = supernet
    full = BlockwiseStudent(m, "student")
    states = [s.detach() for s in states]
    full(states, layout).backward()  # every block's loss
    g_all = m.blocks[0].candidates["L"].attn.qkv.weight.grad.clone()
    m.zero_grad()
    out0 = m.run_block(0, m.blocks[0].candidates["L"], states[0], layout)
    (F.mse_loss(m.norm(out0), m.norm(states[1])) / (2 * len(m.blocks))).backward()
    assert torch.allclose(g_all, m.blocks[0].candidates["L"].attn.qkv.weight.grad, rtol=1e-4, atol=1e-8)

    stages = [StageConfig(resolution=32, steps=1, batch_size=2, lr=1e-3)]
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    sampler = PathSampler(["LW"] * 4, seed=0, phase="step1")
    phase = Phase("step1", stages, choose_path=sampler, blockwise=True, blockwise_input="student")
    train_phase(phase, supernet, setup, ckpt_path=tmp_path / "s.pt")
    assert _changed(before, supernet) == {f"{i}.{k}" for i in range(4) for k in "LW"}
    with pytest.raises(ValueError, match="needs a path drawn per step"):
        train_phase(Phase("step1", stages, blockwise=True, blockwise_input="student"), supernet, setup,
                    ckpt_path=tmp_path / "n.pt")  # fmt: skip
    with pytest.raises(ValueError, match="block-wise input 'x' is not one of teacher, student"):
        BlockwiseStudent(supernet, "x")
