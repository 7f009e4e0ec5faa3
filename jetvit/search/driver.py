"""One beam search on a trained supernet: candidates activated in the supernet, scored, the trajectory saved after
every wave of scores (so a killed search resumes without scoring anything twice), progress shown per round.

With N processes, each round's candidates are scored in shares: process r scores candidates r, r + N, r + 2N, ...,
in waves of N scored side by side whose scores every process then receives (`Runtime.all_gather_object`). Every
process thus records the same scores in the same order and ends with the same trajectory, each candidate is scored
once overall, and N processes score a round about N times faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from jetvit.io import atomic_write_json, read_json
from jetvit.runtime import Runtime
from jetvit.search.beam import beam_search
from jetvit.search.config import BeamConfig
from jetvit.search.supernet import set_arch


def run_beam(
    name: str,
    supernet: nn.Module,
    *,
    start: str,
    propose: Callable[[str], list[str]],
    beam_cfg: BeamConfig,
    scorer: Callable[[nn.Module], float],
    rt: Runtime,
    path: Path,
    feasible: Callable[[str], str | None] | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    """Beam search from `start` with `beam_cfg` (width, min_improvement, max_rounds), resumable from
    the trajectory file `path` (written by rank 0). The candidates are scored in shares across the processes (module
    docstring). Leaves the best architecture active in `supernet` and returns the trajectory."""
    from tqdm import tqdm

    state = read_json(path)
    bar = None

    def score_many(archs: Sequence[str]) -> Iterator[float]:
        for first in range(0, len(archs), rt.world):
            wave = archs[first : first + rt.world]
            mine = None
            if rt.rank < len(wave):
                set_arch(supernet, wave[rt.rank])
                mine = float(scorer(supernet))
            values = rt.all_gather_object(mine)[: len(wave)]
            for arch, value in zip(wave, values):
                if bar is not None:
                    bar.set_postfix(arch=arch, score=f"{value:.5g}")
                    bar.update(1)
                yield value

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
        score_many=score_many,
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
