"""The search's configuration sections: beam, supernet, scorer and budget (typed, read by `jetvit.search`).

The run's config (`jetvit.config.Config`) holds them under `step1.beam`/`step2.beam`, `supernet`, `score` and
`budget`, the latency table under `latency`, the criterion of the picks under `objective` and the measured front under
`front`; their values are checked where the run's config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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
    # How the supernet's candidates are trained (`jetvit.search.supernet`, docs/DESIGN.md has the measurement):
    # uniform: one path per step, each block's kind drawn independently (the paper's single-path sampling);
    # balanced: one path per step, each block's kinds in a shuffled turn, so every kind of every block gets the same
    # number of steps; blockwise: every candidate of every block learns, at every step, to reproduce its teacher block
    # from the teacher's own input (DNA), no path sampled. A block-wise step costs about two single-path ones, so a
    # block-wise supernet gets half the steps of the paper's schedule; it ranked paths better and every seed's
    # searched hybrid kept the teacher at equal compute, where single paths did not (docs/DESIGN.md).
    sampling: Literal["uniform", "balanced", "blockwise"] = "blockwise"
    # What a candidate block learns from under `sampling: blockwise`: student: the tokens a path of the supernet drawn
    # for the step (uniformly, seeded by the step, the same on every process) feeds the block, detached, so that each
    # candidate also learns to correct the errors of the student's blocks before it; teacher: the teacher's tokens
    # entering the block (DNA). Both learn the teacher block's output, every candidate at every step, at the same
    # cost. The student's inputs rank paths better and keep improving with steps where the teacher's stall
    # (docs/DESIGN.md: tau 0.80 / 0.87 against 0.70 / 0.68 of a 0.82 ceiling after 300 steps).
    blockwise_input: Literal["teacher", "student"] = "student"


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
    max_latency_ms: float | None = None  # from the latency table (`latency`), at its resolution
    max_latency_ratio: float | None = None  # relative to the teacher's latency in the table, in (0, 1]


@dataclass
class LatencyConfig:
    """The latency table the search reads (`jetvit.search.latency`): measured on the run's device or predicted for a
    device by the cost model, at `resolution` (default `budget.resolution`)."""

    source: Literal["measured", "predicted", "none"] = "measured"  # none: no table (FLOPs only, the paper's search)
    device: str | None = None  # predicted: a cost-model device (`jetvit info --cost-device`); measured: run.device
    dtype: Literal["fp32", "bf16"] = "fp32"
    resolution: int | list[int] | None = None
    batch: int = 1
    repeats: int = 5
    cache: bool = True  # reuse and keep tables in $JETVIT_CACHE/latency (~/.cache/jetvit/latency)


@dataclass
class ObjectiveConfig:
    """What the search picks. paper: Step 1 the best score, Step 2 the best within `step2.max_full` F blocks (or the
    first to reach the teacher). latency: each step the fastest candidate (latency table) within `tolerance` score
    points of the reference (Step 1: its best score; Step 2 and the front: the teacher's, or as `reference` says)."""

    criterion: Literal["paper", "latency"] = "paper"
    tolerance: float = 0.005  # in the scorer's units: half a point of mIoU or top-1, which scorers give as fractions
    # What the measured front's points are held to. teacher: the teacher's score. front: the best measured point's
    # when it falls short of the teacher. The points are distilled `front.steps` steps, the teacher was trained in full:
    # a brief distillation leaves every point short of what fine-tuning reaches, by more the fewer F blocks it has, so
    # `front` compares the points among themselves, as equally trained (docs/DESIGN.md: on the demo's three seeds it
    # took the two 1-F paths that ended within 0.13 of the paper's pick and declined the one 0.53 below).
    reference: Literal["teacher", "front"] = "teacher"


@dataclass
class FrontConfig:
    """The accuracy-latency front: the Pareto-optimal candidates of Step 2, each distilled `steps` steps from the
    supernet's weights, scored and timed against the teacher (0: the front from the supernet's scores alone)."""

    steps: int = 0
    max_points: int = 4  # the most candidates distilled (the picks of both criteria always among them)
    batch_size: int | None = None  # default: the fine-tuning's first stage's
    # The fine-tuning of the pick starts from its front distillation rather than from the supernet's weights, and its
    # first stage runs `steps` fewer steps (its learning rate warms up again): as many steps, none of them spent twice.
    reuse: bool = True
    # Set over `score.options` for the front's scorer, which scores its few points and, for them, the teacher again:
    # the pick hinges on tenths of a point, finer than the search's many candidates need (the demo: 128 samples, not
    # 32). Empty: the search's own scorer.
    score_options: dict[str, Any] = field(default_factory=dict)
