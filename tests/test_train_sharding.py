"""`run.strategy: fsdp` in this process: a gloo process group of one, so that FSDP2 shards the student and the sharded
checkpoints go through torch.distributed.checkpoint; runs resume with and without a group (a different "world").
The multi-process comparisons are in `test_train_distributed.py`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle

import pytest
import torch
from torch import nn

from jetvit.config import load_config
from jetvit.runtime import Runtime
from jetvit.search.supernet import PathSampler, build_supernet, sample_path
from jetvit.train.checkpoint import (
    load_checkpoint,
    load_full_optimizer,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    shards_dir,
)
from jetvit.train.config import StageConfig
from jetvit.train.data import ImageSet, open_source
from jetvit.train.distill import DistillSetup, Phase, train_phase

# fp32 on the CPU: one process sharded over a group of one computes what it computes alone, up to the order of a few
# sums (the gradient norm over shards).
ATOL = 1e-6
CHOICES = ["LW"] * 4


@contextlib.contextmanager
def process_group():
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


class StopAt:
    """A metrics logger that fails at phase step `step`: the run ends there like a killed one, after the checkpoints
    before that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log(self, phase: str, step: int, **scalars) -> None:
        if step >= self.step:
            raise RuntimeError(f"stopped at step {step}")

    def event(self, *args, **kwargs) -> None:
        pass


@pytest.fixture(scope="module")
def setup(tiny_model):
    teacher = tiny_model().requires_grad_(False)
    # 4 steps, 2 micro-batches each (gradient synchronisation skipped on the first), a checkpoint every 2 steps.
    cfg = load_config("tiny", ["teacher=x", "run.strategy=fsdp", "run.checkpoint_every=2", "run.log_every=1"])
    stages = [StageConfig(resolution=32, steps=4, batch_size=4, micro_batch_size=2, lr=1e-3)]
    images = ImageSet(open_source("keyshapes:8"), list(range(8)))
    return teacher, cfg, stages, images


def _train(setup, ckpt, *, logger=None, compile: str = "none") -> nn.Module:
    teacher, cfg, stages, images = setup
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, compile=compile))
    torch.manual_seed(0)  # the L candidates' new tensors
    supernet = build_supernet(teacher, CHOICES).requires_grad_(True)
    phase = Phase("step1", stages, choose_path=PathSampler(CHOICES, seed=0, phase="step1"))
    rt = Runtime(device=torch.device("cpu"))
    run = DistillSetup(teacher=teacher, images=images, targets=[3], data=cfg.data, distill=cfg.distill,
                       optim=cfg.optim, run=cfg.run, rt=rt, logger=logger)  # fmt: skip
    train_phase(phase, supernet, run, ckpt_path=ckpt)
    return supernet


def _assert_same_weights(a: nn.Module, b: nn.Module, atol: float = ATOL) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=atol, msg=k)


def test_sharded_phase_trains_as_one_process_and_resumes_across_worlds(setup, tmp_path):
    # The resumed part must train a candidate that no step before the checkpoint trained: its AdamW states start
    # at its first gradient, as in the uninterrupted run, not at the resume.
    paths = [sample_path(CHOICES, seed=0, phase="step1", step=s) for s in range(4)]
    assert {(i, k) for p in paths[2:] for i, k in enumerate(p)} - {(i, k) for p in paths[:2] for i, k in enumerate(p)}

    plain = _train(setup, tmp_path / "plain.pt")
    with process_group():
        sharded = _train(setup, tmp_path / "sharded.pt")
    # After the phase the caller's model is a plain module again, with full weights.
    assert all(type(p) is nn.Parameter and type(p.data) is torch.Tensor for p in sharded.parameters())
    _assert_same_weights(plain, sharded)
    assert load_checkpoint(tmp_path / "sharded.pt")["done"] and not shards_dir(tmp_path / "sharded.pt").exists()

    # Sharded, stopped after the checkpoint of step 2; resumed without a process group.
    with process_group(), pytest.raises(RuntimeError, match="stopped"):
        _train(setup, tmp_path / "a.pt", logger=StopAt(3))
    ck = load_checkpoint(tmp_path / "a.pt")
    assert ck["step"] == 2 and len(list(shards_dir(tmp_path / "a.pt").iterdir())) == 1
    _assert_same_weights(plain, _train(setup, tmp_path / "a.pt"))
    assert not shards_dir(tmp_path / "a.pt").exists()  # the full checkpoint of the finished phase replaced them


def test_sharded_supernet_with_compiled_candidates_trains_as_eager(setup, tmp_path, monkeypatch):
    """`run.compile: blocks` under `fsdp`: the sharded copy's candidates compiled after sharding (`aot_eager` here), a
    step gathering the active ones only; the weights of the eager sharded run (float32 reordering apart), and the
    teacher runs eager again afterwards."""
    from torch._dynamo.utils import counters

    from jetvit.compile import is_compiled

    monkeypatch.setenv("JETVIT_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    with process_group():
        eager = _train(setup, tmp_path / "eager.pt")
        compiled = _train(setup, tmp_path / "compiled.pt", compile="blocks")
    _assert_same_weights(eager, compiled, atol=1e-5)
    # the L and W candidates in training and the teacher's F blocks under no_grad: a graph each, whatever the depth
    assert counters["stats"]["unique_graphs"] == 3
    assert not is_compiled(setup[0])  # the teacher outlives the phase: eager again


class TwoOfThree(nn.Module):
    """Three layers, two used: the third never gets a gradient nor AdamW states, as a supernet's inactive
    candidates."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(2, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.layers[0](x))


def _sharded() -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = TwoOfThree()
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(3, 4)).square().sum().backward()
    opt.step()
    opt.zero_grad()


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return {
        k: v.clone() for k, v in get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)).items()
    }


SIDE = {"done": False, "stage": 0, "step": 1, "skipped": 0, "history": {}, "elapsed": 0.0, "rng": []}


def test_sharded_checkpoint_is_atomic_reshards_and_reads_only_data(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    path = tmp_path / "ckpt" / "step1.pt"
    with process_group():
        model, opt = _sharded()
        _step(model, opt)
        save_sharded_checkpoint(path, SIDE, model, opt)
        first = _full(model)
        _step(model, opt)

        # Killed while writing the next one: the shards written, nothing renamed, the file not replaced.
        real_save = dcp.save

        def killed(*args, **kwargs):
            real_save(*args, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(dcp, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            save_sharded_checkpoint(path, {**SIDE, "step": 2}, model, opt)
        monkeypatch.setattr(dcp, "save", real_save)
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and len(list(shards_dir(path).iterdir())) == 2  # the committed one, a temporary one

    # Loaded without a process group (a different world): the weights and AdamW states of the first save.
    torch.manual_seed(1)
    plain = TwoOfThree()
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    load_sharded_checkpoint(path, ck, plain, plain_opt)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=0)
    assert len(plain_opt.state) == 4  # the last layer's weight and bias have none, as before the save
    assert all(s["step"] == 1 for s in plain_opt.state.values())
    assert plain_opt.param_groups[0]["lr"] == 1e-2

    with process_group():
        model, opt = _sharded()
        _step(model, opt)
        save_sharded_checkpoint(path, {**SIDE, "step": 3}, model, opt)
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in shards_dir(path).iterdir()] == [load_checkpoint(path)["shards"].split("/")[1]]

    # A full checkpoint's optimizer state (one process, DDP) into a sharded model: the same states, none where there
    # were none.
    with process_group():
        model, opt = _sharded()
        load_full_optimizer(model, opt, plain_opt.state_dict())
        loaded = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
        assert len(opt.state) == 4
    for (name, _), s in zip(plain.named_parameters(), plain_opt.param_groups[0]["params"]):
        assert (name in loaded["state"]) == (s in plain_opt.state)
        for k, v in plain_opt.state.get(s, {}).items():
            torch.testing.assert_close(loaded["state"][name][k], v, rtol=0, atol=0)

    # A metadata pickle that would run code is refused before it runs.
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    meta = shards_dir(path) / load_checkpoint(path)["shards"].split("/")[1] / ".metadata"
    meta.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="cannot be read"):
        load_sharded_checkpoint(path, load_checkpoint(path), plain, plain_opt)
    assert not marker.exists()


def test_supernet_candidates_are_sharded_apart_unless_they_share_tensors(tiny_model):
    from jetvit.train.sharding import shard_groups

    teacher = tiny_model()
    separate = build_supernet(teacher, CHOICES)
    assert shard_groups(separate.blocks[0]) == list(separate.blocks[0].candidates.values())
    shared = build_supernet(teacher, CHOICES, share=True)  # the candidates hold the same qkv, proj, MLP, norms
    assert shard_groups(shared.blocks[0]) == [shared.blocks[0]]
    assert shard_groups(teacher.blocks[0]) == [teacher.blocks[0]]
