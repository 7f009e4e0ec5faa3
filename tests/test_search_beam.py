"""Beam search over architecture strings: finds a known optimum, scores nothing twice, resumes, obeys budgets, and
gives the same trajectory with its candidates scored in shares across processes."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter

import pytest
import torch

from jetvit.model import validate_arch
from jetvit.runtime import Runtime
from jetvit.search.beam import beam_search, switch_proposals, trade_proposals


def _hamming_scorer(target: str, calls: Counter):
    # Best possible score 0 at `target`; every wrong block costs 1, a W costs a little more than an L so the
    # landscape has a unique optimum that greedy one-switch rounds can reach.
    def score(arch: str) -> float:
        calls[arch] += 1
        return -sum(a != b for a, b in zip(arch, target)) - 0.01 * arch.count("W")

    return score


@pytest.mark.parametrize("target", ["LWLLWW", "WWWWWW", "LLLLLL", "WLLLLW"])
def test_finds_known_optimum_and_never_rescores(target):
    calls = Counter()
    traj = beam_search(
        "L" * 6, propose=switch_proposals("L", "W"), score=_hamming_scorer(target, calls), width=2, min_improvement=0.0
    )
    assert traj["best"]["arch"] == target
    assert max(calls.values()) == 1
    assert set(calls) == set(traj["scores"])
    # Every round's candidates are distinct and none was seen in an earlier round.
    seen = set()
    for rnd in traj["rounds"]:
        archs = [c["arch"] for c in rnd["candidates"]]
        assert len(archs) == len(set(archs))
        assert not seen & set(archs)
        seen |= set(archs)
        assert len(rnd["beam"]) <= 2


def test_beam_wider_than_one_escapes_a_greedy_trap():
    # Switching block 0 alone looks best, but the optimum needs blocks 1 and 2 together.
    table = {"LLL": 0.0, "WLL": 1.0, "LWL": 0.5, "LLW": 0.4, "LWW": 3.0, "WWL": 1.1, "WLW": 1.05, "WWW": 0.0}
    greedy = beam_search("LLL", propose=switch_proposals("L", "W"), score=table.__getitem__, width=1)
    wide = beam_search("LLL", propose=switch_proposals("L", "W"), score=table.__getitem__, width=2)
    assert greedy["best"]["arch"] == "WWL"
    assert wide["best"]["arch"] == "LWW"


def test_stops_when_improvement_below_threshold():
    scores = {
        a: float(a.count("W") == 1) + 0.001 * a.count("W") for a in map("".join, itertools.product("LW", repeat=4))
    }
    traj = beam_search(
        "LLLL", propose=switch_proposals("L", "W"), score=scores.__getitem__, width=2, min_improvement=0.01
    )
    assert len(traj["rounds"]) == 3  # start, round 1 (big gain), round 2 (tiny gain -> stop)
    assert "improved" in traj["stop_reason"]
    assert traj["best"]["arch"].count("W") == 1


def test_f_budget_target_and_feasibility():
    score = lambda a: float(a.count("F")) + (0.5 if a[1] == "F" else 0.0)  # noqa: E731
    budget = lambda a: None if a.count("F") <= 2 else "over the F budget"  # noqa: E731
    traj = beam_search("LWLW", propose=switch_proposals("LW", "F"), score=score, width=3, feasible=budget)
    assert traj["best"]["arch"].count("F") == 2 and traj["best"]["arch"][1] == "F"
    assert "budget" in traj["stop_reason"]
    assert all(a.count("F") <= 2 for a in traj["scores"])
    reached = beam_search("LWLW", propose=switch_proposals("LW", "F"), score=score, width=3, target=1.5)
    assert reached["best"]["score"] >= 1.5 and "target" in reached["stop_reason"]
    assert len(reached["rounds"]) == 2


def test_resume_after_interruption_reuses_scores_and_ends_the_same():
    target = "WLWWLW"
    full = beam_search("L" * 6, propose=switch_proposals("L", "W"), score=_hamming_scorer(target, Counter()), width=3)

    saved = {}
    calls = Counter()
    inner = _hamming_scorer(target, calls)

    def dying(arch):
        if sum(calls.values()) == 7:
            raise KeyboardInterrupt  # a kill in the middle of a round
        return inner(arch)

    with pytest.raises(KeyboardInterrupt):
        beam_search(
            "L" * 6,
            propose=switch_proposals("L", "W"),
            score=dying,
            width=3,
            on_update=lambda t: saved.update(scores=dict(t["scores"])),
        )
    assert len(saved["scores"]) == 7
    resumed = beam_search("L" * 6, propose=switch_proposals("L", "W"), score=inner, width=3, state=saved)
    assert resumed["best"] == full["best"]
    assert resumed["rounds"] == full["rounds"]
    assert max(calls.values()) == 1


def test_validate_arch_rejects_bad_strings():
    assert validate_arch("LWF", 3) == "LWF"
    with pytest.raises(ValueError, match="'LXF'"):
        validate_arch("LXF")
    with pytest.raises(ValueError, match="4 blocks"):
        validate_arch("LWF", 4)


# ---------------------------------------------------------------------------------------------------------------
# Candidates scored in shares across processes (jetvit.search.driver), simulated with threads


class _ThreadGroup:
    """`world` threads standing in for processes: `all_gather` as torch.distributed's, over a barrier."""

    def __init__(self, world: int) -> None:
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world, timeout=60)

    def all_gather(self, rank: int, obj):
        self.slots[rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody writes the next round's slot before everyone has read this one
        return out


class _ThreadRuntime(Runtime):
    def __init__(self, group: _ThreadGroup, rank: int) -> None:
        super().__init__(device=torch.device("cpu"), rank=rank, world=group.world)
        self.group = group

    def all_gather_object(self, obj):
        return self.group.all_gather(self.rank, obj)

    def broadcast_object(self, obj):
        return self.all_gather_object(obj)[0]

    def barrier(self) -> None:
        self.group.all_gather(self.rank, None)


def _search(tiny_model, world: int, path, calls: list, *, state_from=None) -> list[dict]:
    """`run_beam` on `world` simulated processes, each with its own supernet; returns every process's trajectory.
    The scorer (a Hamming score of the active path) records (rank, arch) in `calls`."""
    from jetvit.search.config import BeamConfig
    from jetvit.search.driver import run_beam
    from jetvit.search.supernet import build_supernet

    teacher = tiny_model(depth=6, arch="F" * 6)
    group = _ThreadGroup(world)
    results: list = [None] * world

    def process(rank: int) -> None:
        net = build_supernet(teacher, ["LW"] * 6)
        rt = _ThreadRuntime(group, rank) if world > 1 else Runtime(device=torch.device("cpu"))
        score = _hamming_scorer("WLWWLW", Counter())

        def scorer(model) -> float:
            calls.append((rank, model.arch))
            return score(model.arch)

        beam = BeamConfig(width=3, min_improvement=None)
        propose = switch_proposals("L", "W")
        results[rank] = run_beam(
            "step1", net, start="L" * 6, propose=propose, beam_cfg=beam, scorer=scorer, rt=rt, path=path
        )

    threads = [threading.Thread(target=process, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), "a simulated process failed"
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_candidates_scored_in_shares_give_the_one_process_trajectory(tiny_model, tmp_path, world):
    one_calls: list = []
    (one,) = _search(tiny_model, 1, tmp_path / "one.json", one_calls)
    calls: list = []
    trajs = _search(tiny_model, world, tmp_path / "many.json", calls)
    assert all(t == one for t in trajs), "every process ends with the one-process trajectory"
    assert json.loads((tmp_path / "many.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    archs = [a for _, a in calls]
    assert Counter(archs) == Counter(a for _, a in one_calls) and max(Counter(archs).values()) == 1
    # Process r scored candidates r, r + N, ... of each round: the work is shared out evenly.
    per_rank = Counter(r for r, _ in calls)
    assert set(per_rank) == set(range(world)) and max(per_rank.values()) - min(per_rank.values()) <= len(one["rounds"])
    order = list(one["scores"])
    for r, a in calls:
        rnd = next(x for x in one["rounds"] if any(c["arch"] == a for c in x["candidates"]))
        new = [c["arch"] for c in rnd["candidates"]]
        assert new.index(a) % world == r, (a, r)
    assert list(trajs[0]["scores"]) == order  # the scores recorded in the one-process order


def test_shared_scoring_resumes_from_a_one_process_cache(tiny_model, tmp_path):
    """A search killed mid-round (its cache saved) and resumed on two processes scores only what was missing."""
    one_calls: list = []
    (one,) = _search(tiny_model, 1, tmp_path / "one.json", one_calls)
    partial = {"scores": dict(list(one["scores"].items())[:9])}
    (tmp_path / "resumed.json").write_text(json.dumps(partial))
    calls: list = []
    trajs = _search(tiny_model, 2, tmp_path / "resumed.json", calls)
    assert all(t == one for t in trajs)
    assert sorted(a for _, a in calls) == sorted(a for a in one["scores"] if a not in partial["scores"])


def test_trade_proposals_put_the_other_efficient_kind_in_each_f():
    """The latency-aware Step 2's trade round: each F of the architecture becomes the efficient kind Step 1's path
    (`base`) does not have at that block, one F at a time; the other blocks are left as they are."""
    trade = trade_proposals("LWLL")
    assert trade("FWLF") == ["WWLF", "FWLW"]
    assert trade("LFLL") == ["LLLL"]  # an F on Step 1's W becomes L
    assert trade("LWLL") == []  # no F: nothing to trade
