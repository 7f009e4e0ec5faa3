"""Where and how this process runs: the torchrun process group, device, precision, and collective helpers.

`setup_runtime(device=..., precision=..., seed=...)` (a run config's `run` section) joins the process group when the
process was started by torchrun (NCCL on GPUs, gloo on the CPU), picks the device and the autocast dtype and seeds
torch; `Runtime` carries that to the training loop and the search, which use its `broadcast_object` /
`all_gather_object` / `mean` (no-ops in a single process).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Device = Literal["auto", "cpu", "cuda"]  # auto: CUDA when there is one
Precision = Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on a GPU, fp32 on the CPU


@dataclass
class Runtime:
    """Where and how this process runs: device, rank among `world` processes, autocast."""

    device: torch.device
    rank: int = 0
    world: int = 1
    autocast_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world


def setup_runtime(
    *,
    device: Device = "auto",
    precision: Precision = "auto",
    seed: int = 0,
) -> Runtime:
    """Join the torchrun process group when there is one; pick the device (`auto`: CUDA when there is one) and the
    autocast precision (`auto`: bf16 autocast on a GPU, fp32 on the CPU); seed torch with `seed`. The run config's
    `run.device`, `run.precision` and `run.seed`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is 'cuda' but no CUDA device is available (use run.device=cpu or auto)")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    where = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(where)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and cuda) else None
    torch.manual_seed(seed)
    return Runtime(device=where, rank=rank, world=world, autocast_dtype=dtype)


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter's bytes: equal digests mean bit-identical weights (across processes, reruns)."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if p.numel() else b"")
    return h.hexdigest()[:16]
