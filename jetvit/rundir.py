"""A run directory: the resolved config, `state.json` (which phases are done and what they found), and the step the
checkpoints on disk resume from. Only rank 0 writes; every write is atomic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jetvit.io import atomic_write_json, atomic_write_text, read_json
from jetvit.runtime import Runtime
from jetvit.train.checkpoint import load_checkpoint
from jetvit.train.config import Config, dump_yaml, to_dict

CONFIG_NAME = "config.yaml"
STATE_NAME = "state.json"


def prepare_out_dir(out: Path, cfg: Config, rt: Runtime) -> None:
    """Write the resolved config; refuse to continue a run directory that holds another config."""
    existing = out / CONFIG_NAME
    if existing.is_file():
        import yaml

        old = yaml.safe_load(existing.read_text())
        diff = sorted(_diff_keys(old, to_dict(cfg)))
        if diff:
            raise ValueError(
                f"{out} holds a run with another config (differs in: {', '.join(diff[:8])}); "
                f"rerun with the same config to resume it, or choose another --out"
            )
    if rt.main:
        atomic_write_text(existing, dump_yaml(cfg))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class RunState:
    """`state.json`: which phases are done and what they found; written atomically by rank 0."""

    def __init__(self, path: Path, rt: Runtime) -> None:
        self.path, self.rt = path, rt
        self.data: dict[str, Any] = read_json(path, default={"phases": {}})

    def done(self, phase: str) -> dict[str, Any] | None:
        return self.data["phases"].get(phase)

    def finish(self, phase: str, **result: Any) -> None:
        self.data["phases"][phase] = result
        if self.rt.main:
            atomic_write_json(self.path, self.data)


def resume_step(out: Path, phases: list[tuple[str, int, list[int]]]) -> int:
    """The run-wide step the checkpoints on disk resume from (metrics logged after it are dropped).

    phases: (name, total steps, steps per stage) of the run's training phases in order; `out/ckpt/<name>.pt`.
    """
    offset = 0
    for name, total, stage_steps in phases:
        path = out / "ckpt" / f"{name}.pt"
        if not path.is_file():
            return offset
        ck = load_checkpoint(path)
        if not ck.get("done"):
            return offset + sum(stage_steps[: ck["stage"]]) + ck["step"]
        offset += total
    return offset
