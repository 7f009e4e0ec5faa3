"""The run's configuration for `jetvit search` and `jetvit distill`.

A run is described by one YAML file (see `configs/`), overridable from the command line with
`--set a.b=c` (list items by index: `--set step1.stages.0.steps=10`). Every key is checked against the
dataclasses below: an unknown key is a `ValueError` naming it and the accepted keys, never silently
dropped. The resolved config (defaults filled in, overrides applied) is written into the run directory.

Batch sizes are global (summed over processes); a stage whose global batch is larger than
`micro_batch_size x world_size` is reached by gradient accumulation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetvit._config import build
from jetvit.model import validate_arch
from jetvit.search.config import (
    BeamConfig,
    BudgetConfig,
    FrontConfig,
    LatencyConfig,
    ObjectiveConfig,
    ScoreConfig,
    SupernetConfig,
)
from jetvit.train.config import DataConfig, DistillConfig, OptimConfig, RunSettings, StageConfig


@dataclass
class PhaseConfig:
    """A supernet phase: its training stages, then the beam search on it."""

    stages: list[StageConfig] = field(default_factory=list)
    beam: BeamConfig = field(default_factory=BeamConfig)


@dataclass
class Step2Config(PhaseConfig):
    max_full: int = 2  # F budget: the most full-attention blocks the search may put back
    # Stop putting F blocks back once a candidate scores as well as the teacher (the paper's "a few F blocks recover
    # the accuracy"); false: go on while the F budget and the beam's own criteria allow, to see the whole trajectory.
    stop_at_teacher: bool = True
    # Under `objective.criterion: latency`: Step 2's supernet also holds, at each block, the efficient kind Step 1 did
    # not choose (trained in Step 1's supernet), and after the beam one more round trades each F block of Step 2's
    # best for that kind (an F on an L block of Step 1's path becomes W). The trades go on the front: where W costs
    # what L does, a trade is as fast as dropping the F and may keep more of its accuracy (demo seed 2: docs/DESIGN.md).
    # The supernet then trains three candidates a block rather than two. Ignored under the paper criterion.
    trade: bool = True


@dataclass
class FinetuneConfig:
    stages: list[StageConfig] = field(default_factory=list)
    depth_weight: float | None = None  # overrides distill.depth_weight in the final fine-tuning (pseudo-labels)


@dataclass
class Config:
    teacher: str  # anything jetvit.load_teacher accepts (a saved jetvit directory, an HF id or folder, ...)
    teacher_options: dict[str, Any] = field(default_factory=dict)  # keywords for jetvit.load_teacher (size, ...)
    arch: str | None = None  # `jetvit distill` only: the fixed architecture to fine-tune
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    front: FrontConfig = field(default_factory=FrontConfig)
    step1: PhaseConfig = field(default_factory=PhaseConfig)
    step2: Step2Config = field(default_factory=Step2Config)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunSettings = field(default_factory=RunSettings)

    @property
    def finetune_depth_weight(self) -> float:
        """The depth loss's weight in the final fine-tuning: `finetune.depth_weight`, else `distill.depth_weight`."""
        ft = self.finetune.depth_weight
        return ft if ft is not None else self.distill.depth_weight

    @property
    def step2_trades(self) -> bool:
        """Whether Step 2 holds the other efficient kind and trades F for it: `step2.trade` under the latency
        criterion (the paper criterion keeps the paper's Step 2)."""
        return self.objective.criterion == "latency" and self.step2.trade


# --- building from plain data -------------------------------------------------------------------------


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override to the raw config dict; the value is parsed as YAML."""
    import yaml

    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form key=value (e.g. step1.beam.width=4)")
    key, text = assignment.split("=", 1)
    try:
        value = load_yaml(text)
    except yaml.YAMLError as e:
        raise ValueError(f"override {assignment!r}: the value is not valid YAML ({yaml_problem(e)})") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ValueError(f"override {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
    if isinstance(node, list):
        node[_list_index(node, parts[-1], parts)] = value
    else:
        node[parts[-1]] = value


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"override {'.'.join(path)!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def load_config(path: str | Path | None, overrides: list[str] = (), *, base: dict | None = None) -> Config:
    """Read a YAML config (a file, or a name of a packaged config such as "tiny"), apply `key=value` overrides.

    Raises FileNotFoundError for a missing file and ValueError for an unknown key, a wrong type or an
    invalid value (each naming the key).
    """
    import yaml

    raw: dict = dict(base or {})
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = load_yaml(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"config {p} is not valid YAML ({yaml_problem(e)})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config {p} must be a mapping of keys, got {type(loaded).__name__}")
        raw.update(loaded)
    for assignment in overrides:
        apply_override(raw, assignment)
    if not isinstance(raw.get("teacher", ""), str):
        raw["teacher"] = str(raw["teacher"])  # a path YAML reads as a number, e.g. `teacher: 2024`
    cfg = build(Config, raw)
    validate(cfg)
    return cfg


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, except that `1e-3` is a number as in YAML 1.2 (PyYAML follows YAML 1.1, where a float
    needs a dot, `1.0e-3`, and `lr: 1e-3` would be the string "1e-3")."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader)


def yaml_problem(e: Exception) -> str:
    """A YAML (or decoding) error in one line: where in the file, and what."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(e).split())


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a config shipped in `jetvit/configs/` ("tiny", "dinov3", ...)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = Path(__file__).resolve().parent / "configs" / f"{p.stem}.yaml"
    if p.suffix in ("", ".yaml") and p.parent == Path(".") and packaged.is_file():
        return packaged
    shipped = sorted(q.stem for q in packaged.parent.glob("*.yaml")) if packaged.parent.is_dir() else []
    raise FileNotFoundError(f"config file {str(path)!r} not found (shipped configs: {', '.join(shipped) or 'none'})")


def validate(cfg: Config) -> None:
    """Value checks the types cannot express (ranges, lengths, finite numbers); the types themselves, choices of
    values (`Literal`) included, are checked by `jetvit._config.build`. Each error names the key."""
    for name in ("step1", "step2", "finetune"):
        for i, st in enumerate(getattr(cfg, name).stages):
            key = f"{name}.stages.{i}"
            if st.steps < 0:
                raise ValueError(f"{key}.steps must be >= 0, got {st.steps}")
            if st.batch_size < 1:
                raise ValueError(f"{key}.batch_size must be >= 1, got {st.batch_size}")
            if st.micro_batch_size is not None and not 1 <= st.micro_batch_size <= st.batch_size:
                raise ValueError(f"{key}.micro_batch_size must be in [1, batch_size], got {st.micro_batch_size}")
            if isinstance(st.resolution, list) and len(st.resolution) != 2:
                raise ValueError(f"{key}.resolution must be an int or [H, W], got {st.resolution}")
            if min(st.size) < 1 or st.lr < 0 or st.warmup_steps < 0:
                raise ValueError(f"{key}: resolution, lr and warmup_steps must be positive")
    for name in ("step1", "step2"):
        if getattr(cfg, name).beam.width < 1:
            raise ValueError(f"{name}.beam.width must be >= 1, got {getattr(cfg, name).beam.width}")
    if cfg.step2.max_full < 0:
        raise ValueError(f"step2.max_full must be >= 0, got {cfg.step2.max_full}")
    if cfg.distill.targets == []:
        raise ValueError("distill.targets is an empty list; give block indices, 'last' or 'dpt'")
    if cfg.data.holdout < 1:
        raise ValueError(f"data.holdout must be >= 1 (the search scores candidates on them), got {cfg.data.holdout}")
    if len(cfg.data.scale) != 2 or not 0 < cfg.data.scale[0] <= cfg.data.scale[1] <= 1:
        raise ValueError(f"data.scale must be [lo, hi] with 0 < lo <= hi <= 1, got {cfg.data.scale}")
    if len(cfg.data.ratio) != 2 or not 0 < cfg.data.ratio[0] <= cfg.data.ratio[1]:
        raise ValueError(f"data.ratio must be [lo, hi] with 0 < lo <= hi, got {cfg.data.ratio}")
    r = cfg.budget.max_flops_ratio
    if r is not None and not 0 < r <= 1:
        raise ValueError(f"budget.max_flops_ratio must be in (0, 1], got {r}")
    r = cfg.budget.max_latency_ratio
    if r is not None and not 0 < r <= 1:
        raise ValueError(f"budget.max_latency_ratio must be in (0, 1], got {r}")
    if cfg.budget.max_latency_ms is not None and not cfg.budget.max_latency_ms > 0:
        raise ValueError(f"budget.max_latency_ms must be > 0 or null, got {cfg.budget.max_latency_ms}")
    latency_needed = [
        key
        for key, value in (
            ("budget.max_latency_ms", cfg.budget.max_latency_ms),
            ("budget.max_latency_ratio", cfg.budget.max_latency_ratio),
            ("objective.criterion: latency", cfg.objective.criterion == "latency" or None),
        )
        if value is not None
    ]
    if cfg.latency.source == "none" and latency_needed:
        raise ValueError(
            f"{latency_needed[0]} needs a latency table; latency.source is none (use measured or predicted)"
        )
    if cfg.latency.source == "predicted" and cfg.latency.device is None:
        raise ValueError("latency.source: predicted needs latency.device, a cost-model device (e.g. h100)")
    if cfg.latency.batch < 1 or cfg.latency.repeats < 1:
        raise ValueError(
            f"latency.batch and latency.repeats must be >= 1, got {cfg.latency.batch}, {cfg.latency.repeats}"
        )
    if cfg.objective.tolerance < 0:
        raise ValueError(f"objective.tolerance must be >= 0, got {cfg.objective.tolerance}")
    if cfg.front.steps < 0 or cfg.front.max_points < 1:
        raise ValueError(
            f"front.steps must be >= 0 and front.max_points >= 1, got {cfg.front.steps}, {cfg.front.max_points}"
        )
    if cfg.front.batch_size is not None and cfg.front.batch_size < 1:
        raise ValueError(f"front.batch_size must be >= 1 or null, got {cfg.front.batch_size}")
    if cfg.run.checkpoint_every < 1 or cfg.run.log_every < 1:
        raise ValueError("run.checkpoint_every and run.log_every must be >= 1")
    if cfg.run.eval_every is not None and cfg.run.eval_every < 1:
        raise ValueError(f"run.eval_every must be >= 1 or null, got {cfg.run.eval_every}")
    if cfg.score.batch_size < 1:
        raise ValueError(f"score.batch_size must be >= 1, got {cfg.score.batch_size}")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        raise ValueError(f"data.workers must be >= 0 or null (auto), got {cfg.data.workers}")
    if cfg.budget.max_gflops is not None and not cfg.budget.max_gflops > 0:
        raise ValueError(f"budget.max_gflops must be > 0 or null, got {cfg.budget.max_gflops}")
    for key in ("score.resolution", "budget.resolution", "latency.resolution"):
        res = {"score.resolution": cfg.score.resolution, "budget.resolution": cfg.budget.resolution}.get(
            key, cfg.latency.resolution
        )
        if res is None:
            continue
        sides = [res] if isinstance(res, int) else res
        if len(sides) not in (1, 2) or min(sides) < 1 or (isinstance(res, list) and len(sides) != 2):
            raise ValueError(f"{key} must be a positive int or [H, W], got {res}")
    if cfg.distill.gradient_weight < 0:
        raise ValueError(f"distill.gradient_weight must be >= 0, got {cfg.distill.gradient_weight}")
    if cfg.arch is not None:
        try:
            cfg.arch = validate_arch(cfg.arch)  # upper-cased, as every entry point takes it
        except ValueError as e:
            raise ValueError("arch " + str(e).removeprefix("architecture ")) from None
    for key, value in _floats(to_dict(cfg)):
        if not math.isfinite(value):  # a NaN learning rate trains to NaN and still "finishes"
            raise ValueError(f"{key} must be a finite number, got {value}")


def _floats(d: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(key path, value) of every float in a nested dict/list of config values."""
    if isinstance(d, dict):
        return [kv for k, v in d.items() if k != "options" for kv in _floats(v, f"{prefix}{k}.")]
    if isinstance(d, list):
        return [kv for i, v in enumerate(d) for kv in _floats(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), d)] if isinstance(d, float) else []


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
