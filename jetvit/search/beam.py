"""Beam search over architecture strings (one letter per block), with a pluggable score.

The search is stage-wise greedy in the efficiency order L > W > F (paper, Sec. 3): each round proposes
every single-block change of every architecture in the beam (Step 1: one more L -> W; Step 2: one more
efficient block -> F), scores each new proposal, and keeps the best `width` distinct architectures.

Every architecture is scored at most once: scores live in a cache keyed by the architecture string,
which is also the search's resume state. The search is a pure function of the start, the proposals and
the scores, so a run that reloads the cache after being killed replays the same rounds without scoring
anything twice, and ends where an uninterrupted run ends. A round asks for the scores of all its new
candidates at once (`score_many`), so that they can be scored in parallel (`jetvit.search.driver`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from jetvit.model import ARCH_LETTERS

# The kinds cheapest first (`ATTN_KINDS` lists them from the most to the least expensive: F, W, L).
COST_ORDER = {k: i for i, k in enumerate(reversed(ARCH_LETTERS))}


def switch_proposals(src: str, dst: str) -> Callable[[str], list[str]]:
    """Proposals that change one block of a kind in `src` (e.g. "L" or "LW") to `dst`."""

    def propose(arch: str) -> list[str]:
        return [arch[:i] + dst + arch[i + 1 :] for i, c in enumerate(arch) if c in src]

    return propose


EFFICIENT = "LW"  # the two kinds Step 1 chooses between


def other_efficient(kind: str) -> str:
    """The efficient kind that is not `kind` (W for L, L for W)."""
    return EFFICIENT.replace(kind, "")


def trade_proposals(base: str) -> Callable[[str], list[str]]:
    """Proposals that trade one F block of an architecture for the efficient kind `base` (Step 1's path) does not
    have there: an F put back on an L block of `base` becomes W, on a W block L (the latency-aware Step 2's last
    round, `jetvit.pipeline`). Where W costs what L does, such a trade buys the same speed as removing the F, and
    may keep more of its accuracy."""

    def propose(arch: str) -> list[str]:
        return [
            arch[:i] + other_efficient(base[i]) + arch[i + 1 :]
            for i, c in enumerate(arch)
            if c == "F" and base[i] in EFFICIENT
        ]

    return propose


def changed_blocks(parent: str, child: str) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(parent, child)) if a != b]


def _rank(scores: dict[str, float], archs: Iterable[str]) -> list[str]:
    # Highest score first; ties go to the more efficient architecture (L before W before F, block by
    # block), so the order never depends on dict or proposal order.
    return sorted(archs, key=lambda a: (-scores[a], tuple(COST_ORDER[c] for c in a)))


def beam_search(
    start: str,
    *,
    propose: Callable[[str], Iterable[str]],
    score: Callable[[str], float] | None = None,
    score_many: Callable[[Sequence[str]], Iterable[float]] | None = None,
    width: int,
    min_improvement: float | None = None,
    max_rounds: int | None = None,
    feasible: Callable[[str], str | None] | None = None,
    target: float | None = None,
    state: dict[str, Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    on_round: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]:
    """Beam search from `start`; returns the trajectory (a JSON-able dict).

    Args:
        propose: arch -> the architectures one step away.
        score: arch -> float, higher is better; called at most once per distinct architecture.
        score_many: instead of `score`, archs -> their scores in the same order, as an iterable that may yield
            each score as soon as it is known (every new score is recorded, and passed to `on_update`, at once).
            Called once per round with the round's unscored candidates, each architecture at most once overall.
        width: beam width B: architectures kept after each round.
        min_improvement: stop when a round's best score exceeds the best so far by no more than this.
        max_rounds: stop after this many rounds.
        feasible: arch -> None when allowed, else the reason it is not (e.g. over the FLOP budget);
            infeasible proposals are recorded and never scored.
        target: stop as soon as a score reaches this (e.g. the teacher's own score).
        state: a trajectory returned (or passed to `on_update`) by an earlier, interrupted call; its
            scores are reused, never recomputed.
        on_update: called with the trajectory after every newly recorded score and every round, to persist it.
        on_round: called with (round, number of proposals) before a round is scored, e.g. for a progress bar.

    The trajectory holds `scores` (every architecture scored), `rounds` (round 0 is the start; each
    later round lists its candidates with parent, changed blocks and score, and the beam it kept),
    `best` {arch, score, round} and `stop_reason`.
    """
    if width < 1:
        raise ValueError(f"beam width must be >= 1, got {width}")
    if (score is None) == (score_many is None):
        raise ValueError("give beam_search one of score (one architecture) or score_many (a round's), not both")
    if score_many is None:
        score_many = lambda archs: (score(a) for a in archs)  # noqa: E731
    cache: dict[str, float] = dict((state or {}).get("scores", {}))
    traj: dict[str, Any] = {"start": start, "width": width, "scores": cache, "rounds": [], "stop_reason": None}

    def score_new(archs: Iterable[str]) -> None:
        todo = [a for a in archs if a not in cache]
        got = 0
        for arch, value in zip(todo, score_many(todo)) if todo else ():
            cache[arch] = float(value)
            got += 1
            if on_update is not None:
                on_update(traj)
        assert got == len(todo), f"score_many gave {got} scores for {len(todo)} architectures"

    score_new([start])
    best = {"arch": start, "score": cache[start], "round": 0}
    traj["best"] = dict(best)
    traj["rounds"].append({"round": 0, "candidates": [{"arch": start, "score": best["score"]}], "beam": [start]})
    beam = [start]
    seen = {start}
    r = 0
    while True:
        if target is not None and best["score"] >= target:
            traj["stop_reason"] = f"score {best['score']:.6g} reached the target {target:.6g}"
            break
        if max_rounds is not None and r >= max_rounds:
            traj["stop_reason"] = f"reached max_rounds={max_rounds}"
            break
        r += 1
        # Proposals in beam order, each architecture once (first parent wins), never one seen before.
        candidates: dict[str, dict[str, Any]] = {}
        infeasible: list[dict[str, str]] = []
        for parent in beam:
            for child in propose(parent):
                if child in seen or child in candidates or any(x["arch"] == child for x in infeasible):
                    continue
                reason = feasible(child) if feasible is not None else None
                if reason is not None:
                    infeasible.append({"arch": child, "reason": reason})
                    continue
                candidates[child] = {"arch": child, "parent": parent, "changed": changed_blocks(parent, child)}
        seen.update(candidates)
        if not candidates:
            traj["rounds"].append({"round": r, "candidates": [], "infeasible": infeasible, "beam": []})
            traj["stop_reason"] = "no allowed proposal left" + (" (budget)" if infeasible else "")
            break
        if on_round is not None:
            on_round(r, len(candidates))
        score_new(candidates)
        for c in candidates.values():
            c["score"] = cache[c["arch"]]
        ranked = _rank(cache, candidates)
        beam = ranked[:width]
        round_best = cache[ranked[0]]
        traj["rounds"].append(
            {
                "round": r,
                "candidates": list(candidates.values()),
                "infeasible": infeasible,
                "beam": beam,
                "best": {"arch": ranked[0], "score": round_best},
            }
        )
        improved = round_best - best["score"]
        if round_best > best["score"]:
            best = {"arch": ranked[0], "score": round_best, "round": r}
            traj["best"] = dict(best)
        if on_update is not None:
            on_update(traj)
        if min_improvement is not None and improved <= min_improvement:
            traj["stop_reason"] = f"round {r} improved the best score by {improved:.3g} <= {min_improvement:g}"
            break
    if on_update is not None:
        on_update(traj)
    return traj
