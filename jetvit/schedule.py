"""Learning-rate schedules: linear warm-up, then cosine, linear or constant decay."""

from __future__ import annotations

import math
from typing import Literal, get_args

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def lr_factor(
    step: int,
    *,
    steps: int,
    warmup: int = 0,
    schedule: Schedule = "cosine",
    final_ratio: float = 0.0,
    base: float = 1.0,
) -> float:
    """The multiplier of the base lr at 0-based optimizer step `step` of `steps`.

    Warm-up: (step + 1) / warmup for the first `warmup` steps. Then, with t going from 0 to 1 over the remaining
    steps (held at 1 past the end): cosine from 1 down to `final_ratio`, linear from 1 down to `final_ratio`, or
    constant 1. ValueError for a schedule not in `SCHEDULES`.

    base: the value the schedule starts from (1 gives the multiplier; the base lr gives the lr itself). It is
    multiplied in before the divisions, so `lr_factor(..., base=lr)` rounds as `lr * (step + 1) / warmup` always
    has, where `lr * lr_factor(...)` can differ in the last bit: runs recorded before this function existed rebuild
    bit for bit.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1, (step - warmup) / max(1, steps - warmup))
    low = base * final_ratio
    if schedule == "cosine":
        return low + 0.5 * (base - low) * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return base + (low - base) * t
    return base
