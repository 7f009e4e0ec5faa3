"""Training on CUDA: compiled (Inductor) bf16 training against eager, the data path (uint8 batches in pinned memory,
loader workers, fused AdamW, no host synchronisation inside a step), and FSDP with compiled blocks. The tiny model
sees 40 px crops: a 5x5 patch grid, which 2x2 windows cover only with padding (masked windows)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from jetvit.config import load_config
from jetvit.runtime import Runtime
from jetvit.train.config import StageConfig
from jetvit.train.data import ImageSet, open_source
from jetvit.train.distill import DistillSetup, Phase, Trainer, train_phase

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ARCH = "LWFL"
STAGES = [StageConfig(resolution=40, steps=3, batch_size=4, micro_batch_size=2, lr=1e-3)]


class Losses:
    """A metrics logger that keeps the logged losses."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def log(self, phase: str, step: int, **scalars) -> None:
        if "loss" in scalars:
            self.losses.append(scalars["loss"])

    def event(self, *args, **kwargs) -> None:
        pass


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def models(tiny_model):
    """(teacher, student) on CUDA: the student's weights random, so that its dynamic convolution is not zero."""
    teacher = tiny_model().cuda().requires_grad_(False)
    student = tiny_model(ARCH, seed=1, random_weights=True).cuda().train()
    return teacher, student


def _setup(teacher, overrides: list[str], *, logger=None, dtype=torch.bfloat16) -> DistillSetup:
    cfg = load_config("tiny", ["teacher=x", "run.log_every=1", *overrides])
    rt = Runtime(device=torch.device("cuda"), autocast_dtype=dtype)
    images = ImageSet(open_source("keyshapes:8"), list(range(8)))
    return DistillSetup(teacher=teacher, images=images, targets=[3], data=cfg.data, distill=cfg.distill,
                        optim=cfg.optim, run=cfg.run, rt=rt, logger=logger)  # fmt: skip


@torch.no_grad()
def _update_cosine(before: torch.nn.Module, a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Cosine similarity of two trainings' weight updates from the same start (all tensors concatenated)."""
    da = torch.cat([(pa - p0).flatten().float() for p0, pa in zip(before.parameters(), a.parameters())])
    db = torch.cat([(pb - p0).flatten().float() for p0, pb in zip(before.parameters(), b.parameters())])
    return float(torch.nn.functional.cosine_similarity(da, db, dim=0))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_bf16_training_follows_eager(models, tmp_path, checkpointing):
    teacher, start = models
    runs = {}
    for mode in ("none", "blocks"):
        student, logger = copy.deepcopy(start), Losses()
        opts = [f"run.compile={mode}", f"run.activation_checkpointing={str(checkpointing).lower()}"]
        train_phase(Phase("finetune", STAGES), student, _setup(teacher, opts, logger=logger),
                    ckpt_path=tmp_path / f"{mode}.pt")  # fmt: skip
        runs[mode] = (student, logger.losses)
    (eager, eager_losses), (compiled, compiled_losses) = runs["none"], runs["blocks"]
    assert len(eager_losses) == 3 and all(torch.isfinite(torch.tensor(eager_losses)))
    # bf16: Inductor keeps fused intermediates in fp32 where eager rounds each op's output to bf16
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=5e-2, atol=0)
    assert _update_cosine(start, eager, compiled) > 0.9
    # every trained tensor moved under compile too (a graph that dropped a gradient leaves its tensors in place)
    moved = [not torch.equal(p0, p) for p0, p in zip(start.parameters(), compiled.parameters())]
    assert all(moved)


def test_data_path_is_uint8_pinned_with_workers_fused_adamw_and_no_sync_in_a_step(models, tmp_path):
    teacher, start = models
    trainer = Trainer(Phase("finetune", STAGES), copy.deepcopy(start), _setup(teacher, []), ckpt_path=tmp_path / "c.pt")
    assert trainer.opt.defaults["fused"] is True
    stage = STAGES[0]
    batches = trainer._batches(0, stage, 0)
    loader = trainer._loader([batches])
    first = next(loader)
    assert first["images"].dtype == torch.uint8 and first["images"].is_pinned()
    assert trainer.setup.data.resolved_workers("cuda") > 0
    trainer.train_step(itertools.chain([first], loader), batches.accum, 1e-3)  # warm-up: lazy initialisations
    step = [next(loader) for _ in range(batches.accum)]  # fetched first: the step itself is what is checked
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call inside the step raises
    try:
        loss, feat, grad_norm = trainer.train_step(iter(step), batches.accum, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda" and torch.isfinite(loss) and grad_norm is not None


def test_fused_adamw_checkpoint_resumes_exactly_on_cuda(models, tmp_path):
    """fp32 on the GPU: 3 steps straight, or 2 then a resume from the checkpoint, give the same weights."""
    teacher, start = models
    stages = [StageConfig(resolution=40, steps=3, batch_size=4, lr=1e-3)]
    straight = copy.deepcopy(start)
    train_phase(Phase("finetune", stages), straight, _setup(teacher, [], dtype=None), ckpt_path=tmp_path / "a.pt")

    class StopAfter2(Losses):
        def log(self, phase: str, step: int, **scalars) -> None:
            if step >= 3:
                raise RuntimeError("stop")

    resumed = copy.deepcopy(start)
    setup = _setup(teacher, ["run.checkpoint_every=2"], logger=StopAfter2(), dtype=None)
    with pytest.raises(RuntimeError, match="stop"):
        train_phase(Phase("finetune", stages), resumed, setup, ckpt_path=tmp_path / "b.pt")
    resumed = copy.deepcopy(start)
    train_phase(Phase("finetune", stages), resumed, _setup(teacher, [], dtype=None), ckpt_path=tmp_path / "b.pt")
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # SDPA's backward may sum in another order


def test_fsdp_with_compiled_blocks_trains_as_one_process(models, tmp_path):
    """FSDP2 over a one-process NCCL group, each block sharded then compiled (its hooks traced by Dynamo): the loss
    curve of the same run without a process group."""
    teacher, start = models
    plain, plain_log = copy.deepcopy(start), Losses()
    train_phase(Phase("finetune", STAGES), plain, _setup(teacher, ["run.compile=blocks"], logger=plain_log),
                ckpt_path=tmp_path / "plain.pt")  # fmt: skip
    torch._dynamo.reset()
    torch.distributed.init_process_group("nccl", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        sharded, sharded_log = copy.deepcopy(start), Losses()
        setup = _setup(teacher, ["run.compile=blocks", "run.strategy=fsdp"], logger=sharded_log)
        train_phase(Phase("finetune", STAGES), sharded, setup, ckpt_path=tmp_path / "fsdp.pt")
    finally:
        torch.distributed.destroy_process_group()
    # FSDP's mixed precision holds the gathered weights in bf16, where autocast casts them per product: about equal
    torch.testing.assert_close(torch.tensor(sharded_log.losses), torch.tensor(plain_log.losses), rtol=5e-2, atol=0)
    assert _update_cosine(start, plain, sharded) > 0.9
