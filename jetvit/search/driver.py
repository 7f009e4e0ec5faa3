"""One beam search on a trained supernet: candidates activated in the supernet, scored, the trajectory saved after
every score (so a killed search resumes without scoring anything twice), progress shown per round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from jetvit.io import atomic_write_json, read_json
from jetvit.runtime import Runtime
from jetvit.search.beam import beam_search
from jetvit.search.supernet import set_arch


def run_beam(
    name: str,
    supernet: nn.Module,
    *,
    start: str,
    propose: Callable[[str], list[str]],
    beam_cfg,
    scorer: Callable[[nn.Module], float],
    rt: Runtime,
    path: Path,
    feasible: Callable[[str], str | None] | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    """Beam search from `start` with `beam_cfg` (`BeamConfig`: width, min_improvement, max_rounds), resumable from
    the trajectory file `path`. Every process scores; rank 0's score is used (and written). Leaves the best
    architecture active in `supernet` and returns the trajectory."""
    from tqdm import tqdm

    state = read_json(path)
    bar = None

    def score(arch: str) -> float:
        set_arch(supernet, arch)
        value = rt.broadcast_object(float(scorer(supernet)))
        if bar is not None:
            bar.set_postfix(arch=arch, score=f"{value:.5g}")
            bar.update(1)
        return value

    def on_round(r: int, n: int) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
        bar = tqdm(total=n, desc=f"{name} round {r}", disable=not rt.main, dynamic_ncols=True)

    def save(traj: dict[str, Any]) -> None:
        if rt.main:
            atomic_write_json(path, traj)

    traj = beam_search(
        start,
        propose=propose,
        score=score,
        width=beam_cfg.width,
        min_improvement=beam_cfg.min_improvement,
        max_rounds=beam_cfg.max_rounds,
        feasible=feasible,
        target=target,
        state=state,
        on_update=save,
        on_round=on_round,
    )
    if bar is not None:
        bar.close()
    set_arch(supernet, traj["best"]["arch"])
    return traj
