"""What the search may return: the FLOP budget (from the model's own cost model) and the F budget of Step 2.

A budget is a function `arch -> None` (feasible) or a reason string (why not), which `beam_search` records for each
refused candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from jetvit.model import HybridViT, ViTConfig
from jetvit.search.config import BudgetConfig


class FlopBudget:
    """Feasibility of an architecture under a FLOP limit at `resolution`, from `HybridViT.flops` (cached).

    max_gflops: an absolute limit; max_flops_ratio: a limit relative to the teacher's FLOPs; both may be given
    (the tighter wins) or neither (no limit, `reason` always None).
    """

    def __init__(
        self,
        teacher_cfg: ViTConfig,
        resolution: int | list[int] | tuple[int, int],
        *,
        max_gflops: float | None = None,
        max_flops_ratio: float | None = None,
    ) -> None:
        self._cache: dict[str, float] = {}
        self.size = (resolution, resolution) if isinstance(resolution, int) else (resolution[0], resolution[1])
        self.base_cfg = teacher_cfg
        self.teacher_flops = self.flops(teacher_cfg.arch)
        limits = []
        if max_gflops is not None:
            limits.append(max_gflops * 1e9)
        if max_flops_ratio is not None:
            limits.append(max_flops_ratio * self.teacher_flops)
        self.limit = min(limits) if limits else None

    @classmethod
    def from_config(cls, teacher_cfg: ViTConfig, budget: BudgetConfig) -> FlopBudget:
        """From a run config's `budget` section."""
        return cls(teacher_cfg, budget.resolution, max_gflops=budget.max_gflops, max_flops_ratio=budget.max_flops_ratio)

    def flops(self, arch: str) -> float:
        if arch not in self._cache:
            with torch.device("meta"):  # shapes only: the cost model needs the structure, not the weights
                model = HybridViT(dataclasses.replace(self.base_cfg, arch=arch))
            self._cache[arch] = float(model.flops(*self.size)["total"])
        return self._cache[arch]

    def reason(self, arch: str) -> str | None:
        """None when `arch` fits the limit, else why not."""
        if self.limit is None:
            return None
        f = self.flops(arch)
        return None if f <= self.limit else f"{f / 1e9:.3g} GFLOPs over the budget {self.limit / 1e9:.3g}"

    def check_start(self, start: str, *, letters: str) -> None:
        """ValueError when the search cannot return an architecture within the limit: `start` (where the search
        begins, and what it returns when nothing better is allowed) is over it. The message gives the cheapest
        architecture of the search space (each block's cheapest kind among `letters`) and its cost."""
        if self.reason(start) is None:
            return
        kinds = {k: self.flops(k * len(start)) for k in letters}
        cheapest = min(kinds, key=kinds.get) * len(start)
        H, W = self.size
        limit = f"{self.limit / 1e9:.4g} GFLOPs at {H}x{W}"
        if self.reason(cheapest) is not None:
            raise ValueError(
                f"the FLOP budget ({limit}: budget.max_gflops / budget.max_flops_ratio) cannot be met: the cheapest "
                f"architecture, {cheapest}, costs {self.flops(cheapest) / 1e9:.4g} GFLOPs "
                f"({self.flops(cheapest) / self.teacher_flops:.3f} of the teacher's); raise the budget"
            )
        raise ValueError(
            f"the search starts from {start} ({self.flops(start) / 1e9:.4g} GFLOPs), which is over the FLOP budget "
            f"({limit}); only architectures near {cheapest} ({self.flops(cheapest) / 1e9:.4g} GFLOPs) fit it: "
            f"raise the budget"
        )


def full_attention_budget(max_full: int, flops: FlopBudget) -> Callable[[str], str | None]:
    """Step 2's feasibility: at most `max_full` F blocks, and within the FLOP budget."""

    def reason(arch: str) -> str | None:
        if arch.count("F") > max_full:
            return f"{arch.count('F')} full-attention blocks > step2.max_full={max_full}"
        return flops.reason(arch)

    return reason
