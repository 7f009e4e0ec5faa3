"""The search's configuration sections: beam, supernet, scorer and budget (typed, read by `jetvit.search`).

The run's config (`jetvit.config.Config`) holds them under `step1.beam`/`step2.beam`, `supernet`, `score` and
`budget`; their values are checked where the run's config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jetvit.model import LinearAttnConfig


@dataclass
class BeamConfig:
    """One beam search: the beam width and when to stop."""

    width: int = 3
    min_improvement: float | None = 1e-4  # stop when a round improves the best score by no more than this
    max_rounds: int | None = None


@dataclass
class SupernetConfig:
    # True: the candidates of a block share every inherited tensor (qkv, proj, norms, MLP) and differ only
    # in their kind's extras. False: each candidate holds its own copy of the whole teacher block (ranked
    # paths better in our measurement, at twice the block memory; see jetvit.search.supernet).
    share: bool = False
    window_size: int | None = None  # W blocks' window side in patches; None: the teacher config's
    # The L blocks' options (kernel, convolution, RoPE...: jetvit.model.LinearAttnConfig); the library's defaults
    # unless set, whatever options a saved teacher's config happens to carry.
    linear: LinearAttnConfig = field(default_factory=LinearAttnConfig)


@dataclass
class ScoreConfig:
    scorer: str = "feature_mse"  # feature_mse | feature_cosine | "package.module:factory"
    resolution: int | list[int] = 224
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)  # passed to a "module:factory" scorer


@dataclass
class BudgetConfig:
    """Cost limits on the searched architecture, from the model's cost model at `resolution`."""

    resolution: int | list[int] = 1024
    max_gflops: float | None = None
    max_flops_ratio: float | None = None  # relative to the teacher, in (0, 1]
