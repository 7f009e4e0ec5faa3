"""How the training loop holds the student across processes: `run.strategy` `ddp` (replicated) or `fsdp` (sharded).

- `ddp`: every process holds the whole student, its gradients and AdamW states; `DistributedDataParallel` averages
  the gradients (`find_unused_parameters`: a supernet's inactive candidates and a depth head without a depth loss get
  no gradient).
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each block of `model.blocks`, then the rest of the
  student (patch embedding, tokens, final norm, heads) as the root group, over all processes: every process holds
  1/N of the fp32 parameters (the master weights), of their gradients and of the AdamW states, and gathers one
  block's parameters at a time for its forward and backward. Under bf16 autocast the gathered parameters are bf16
  and the gradients are reduced in fp32 (`MixedPrecisionPolicy`). A supernet's candidates with weights of their
  own are groups of their own (`shard_groups`): a step gathers the active candidate of each block only, and the
  inactive ones get no gradient (None), which AdamW skips, as under DDP. Candidates sharing tensors
  (`supernet.share: true`) stay in their block's group, gathered together.

A single process trains the student as it is under either strategy, and computes and checkpoints exactly as a
one-process `ddp` run: sharding over one process only adds copies. `fsdp` shards whenever a process group exists,
though, even one of a single process (the tests use one).

The caller's model stays a plain module. Under `fsdp` the loop trains a sharded copy (`Trainee.model`) that takes
over the caller's parameter tensors: the copy is built on the same tensors, sharded, and the caller's parameters are
then emptied, so that no process holds the whole student while it trains. `Trainee.finish` gathers the trained
weights on every process (the search scores candidates in shares across the processes, so each needs the whole
model) and gives them back to the caller's model, which the search and the export use afterwards. A phase that fails
under `fsdp` leaves the caller's model emptied: the run ends there, and resumes from its checkpoint.

The frozen teacher is not sharded: it runs forward only, under no_grad, once per micro-batch, and sharding it would
gather every block's weights for each of those forwards. `frozen_teacher` holds it once per process, in bf16 when
a sharded run computes in bf16 (half the memory; autocast would cast its weights to bf16 for every product anyway).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from jetvit.runtime import Runtime

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


@dataclass
class Trainee:
    """The student as the training loop drives it.

    original: the caller's model. model: the model whose parameters are optimised, whose path a supernet phase
    chooses and which an evaluation scores (the caller's model, or under `fsdp` its sharded copy). module: what the
    loop calls on a batch of images (the `DistillStudent` around `model`, wrapped by DDP or sharded).
    kind: "plain" (one process), "ddp" or "fsdp".
    """

    original: nn.Module
    model: nn.Module
    module: nn.Module
    kind: str

    @property
    def sharded(self) -> bool:
        return self.kind == "fsdp"

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (under `fsdp`, each process's shards)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def micro_batch(self, *, last: bool) -> Iterator[None]:
        """Forward and backward of one micro-batch: gradients are synchronised across processes only on the `last`
        micro-batch of an optimizer step (gradient accumulation)."""
        if self.kind == "ddp" and not last:
            with self.module.no_sync():
                yield
            return
        if self.kind == "fsdp":
            self.module.set_requires_gradient_sync(last)
        yield

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the gradients to global norm `max_norm` (over all processes' shards); returns the norm before, on the
        device (read it only when it is logged: reading it synchronises with the device)."""
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # a DTensor: each shard's part reduced to the whole norm
            norm = norm.full_tensor()
        return norm

    def evaluate(self, fn: Callable[[nn.Module], Any]) -> Any:
        """`fn(model)` in eval mode, then back to training. Under `fsdp` the root group's parameters are gathered
        for the call (the blocks gather their own as they run), so `fn` may call any method of the model."""
        try:
            if not self.sharded:
                return fn(self.model.eval())
            self.module.unshard()
            try:
                return fn(self.model.eval())
            finally:
                self.module.reshard()
        finally:
            self.model.train()

    def finish(self) -> None:
        """After training: the trained weights in the caller's model (a plain module again, every process a full
        copy). Under `fsdp` the shards are gathered on every process; the sharded copy is not used afterwards."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        for name, p in self.original.named_parameters():  # shared tensors once: each takes its first name's value
            p.data = full[name]
        self.original.train(self.model.training)


def shards(strategy: str) -> bool:
    """Whether `strategy` shards the student in this process: `fsdp`, in a process group."""
    if strategy not in STRATEGIES:
        raise ValueError(f"run.strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    return strategy == "fsdp" and torch.distributed.is_available() and torch.distributed.is_initialized()


def wrap_student(student: nn.Module, rt: Runtime, strategy: str) -> Trainee:
    """The `Trainee` of `student` (a `DistillStudent`: images -> features; its `model` is trained) for `strategy`
    (`STRATEGIES`) on runtime `rt`. Without a process group: `student` as it is, whatever the strategy."""
    model = student.model
    if shards(strategy):
        return _fully_shard(student, rt)
    if not rt.distributed:
        return Trainee(original=model, model=model, module=student, kind="plain")
    from torch.nn.parallel import DistributedDataParallel

    # Unused parameters: the inactive candidates' extras, a depth head without depth loss.
    ddp = DistributedDataParallel(
        student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, find_unused_parameters=True
    )
    return Trainee(original=model, model=model, module=ddp, kind="ddp")


def _fully_shard(student: nn.Module, rt: Runtime) -> Trainee:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The copy shares the caller's tensors (the memo maps each to itself): no second copy of the weights, and tensors
    # shared inside a supernet stay shared. fully_shard then replaces the copy's parameters by its shards.
    memo: dict[int, Any] = {id(t): t for t in (*student.parameters(), *student.buffers())}
    sharded = copy.deepcopy(student, memo)
    mesh = init_device_mesh(rt.device.type, (torch.distributed.get_world_size(),))
    bf16 = rt.autocast_dtype == torch.bfloat16
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    groups = [g for blk in sharded.model.blocks for g in shard_groups(blk)]
    for group in groups:
        fully_shard(group, mesh=mesh, mp_policy=mp)
    fully_shard(sharded, mesh=mesh, mp_policy=mp)
    # A group that has never been gathered has no unsharded parameters yet, and FSDP2 (torch 2.13) then fails in
    # the post-backward of a micro-batch without gradient sync whenever a step leaves the group out (an inactive
    # candidate). Gathering each group once, one at a time, creates them; resharding frees their storage again.
    for group in groups:
        group.unshard()
        group.reshard()
    for p in student.model.parameters():  # the shards hold the values now; `Trainee.finish` refills these
        p.data = p.data.new_empty(0)
    return Trainee(original=student.model, model=sharded.model, module=sharded, kind="fsdp")


def shard_groups(block: nn.Module) -> list[nn.Module]:
    """The modules of one block of `model.blocks` that `fsdp` shards as groups, each gathered only when it runs.

    A supernet block whose candidates hold separate weights (`supernet.share: false`): each candidate, so a step
    gathers only the active path's weights, not every candidate's. Candidates that share tensors cannot be
    separate groups (a tensor belongs to one group), so a shared supernet's block, like a plain block, is one group.
    """
    candidates = getattr(block, "candidates", None)
    if candidates is None or len(candidates) < 2:
        return [block]
    seen: set[int] = set()
    for cand in candidates.values():
        ids = {id(p) for p in cand.parameters()}
        if ids & seen:
            return [block]
        seen |= ids
    own = {id(p) for p in block.parameters()} - seen
    return [*candidates.values(), *([block] if own else [])]


def frozen_teacher(teacher: nn.Module, rt: Runtime, strategy: str) -> nn.Module:
    """The frozen teacher as a run holds it once its students have inherited their weights: when the student is
    sharded and computes in bf16 autocast, cast to bf16 in place (the module docstring says why); else as it is."""
    if shards(strategy) and rt.autocast_dtype == torch.bfloat16:
        teacher.to(torch.bfloat16)
    return teacher
