"""Beam search over architecture strings: finds a known optimum, scores nothing twice, resumes, obeys budgets."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from jetvit.model import validate_arch
from jetvit.search.beam import beam_search, switch_proposals


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
