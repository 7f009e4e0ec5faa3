"""What the search knows of speed: a latency table, the budgets and picks on it, and the accuracy-latency front.

A hybrid's blocks differ only in their attention kind, so one forward's latency on a device, at one dtype, batch and
resolution, is the fixed parts (patch embedding and position terms, final norm) plus one time per block kind:

    latency(arch) = fixed + sum over blocks of blocks[kind]

`LatencyTable` holds those numbers, measured on the target device or predicted by the cost model
(`jetvit.bench.latency` fills and caches it), and predicts any architecture of the search space without running it.
The search reads it three ways: a budget (`LatencyBudget`: `budget.max_latency_ms`, `budget.max_latency_ratio` of
the teacher), the picks of the latency criterion (`objective.criterion: latency`, `pick_fastest`: the fastest
candidate within `objective.tolerance` of a reference score), and the front (`pareto_front`: every scored candidate
no other is both faster and better than).

This module is pure (no torch, no timing): tables come in as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LatencyTable:
    """Milliseconds of one forward of the students (one config, every architecture) in one setting.

    blocks: letter -> ms of one block of that kind; fixed: ms outside the blocks. setting: where the numbers hold
    (device, dtype, batch, resolution, threads, source "measured" or "predicted", versions). check: whole
    architectures timed end to end against `predict` (arch -> {"measured": ms, "predicted": ms}), how well the
    additive model holds there."""

    blocks: dict[str, float]
    fixed: float
    setting: dict[str, Any]
    check: dict[str, dict[str, float]] = field(default_factory=dict)

    def predict(self, arch: str) -> float:
        """Predicted ms of architecture `arch` (ValueError for a letter the table has no time for)."""
        missing = sorted(set(arch) - set(self.blocks))
        if missing:
            raise ValueError(f"the latency table has no time for block kind {', '.join(missing)} (it has {self.kinds})")
        return self.fixed + sum(self.blocks[c] for c in arch)

    @property
    def kinds(self) -> str:
        return "".join(self.blocks)

    def speedup(self, arch: str, teacher: str) -> float:
        """Predicted teacher-relative speedup of `arch`."""
        return self.predict(teacher) / self.predict(arch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        try:
            blocks = {str(k): float(v) for k, v in data["blocks"].items()}
            table = cls(blocks, float(data["fixed"]), dict(data["setting"]), dict(data.get("check", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a latency table ({type(e).__name__}: {e})") from None
        if not blocks or not all(math.isfinite(v) and v >= 0 for v in [*blocks.values(), table.fixed]):
            raise ValueError(f"a latency table needs finite, non-negative times; got {data['blocks']}, {data['fixed']}")
        return table

    def describe(self) -> str:
        """One line: where the numbers hold and what they are."""
        s = self.setting
        where = f"{s.get('source', '?')} on {s.get('device_name') or s.get('device', '?')}"
        res = s.get("resolution", ["?", "?"])
        times = ", ".join(f"{k} {v:.3g} ms" for k, v in self.blocks.items())
        return (
            f"{where}, {s.get('dtype', '?')}, batch {s.get('batch', '?')}, {res[0]}x{res[1]}: "
            f"{times} per block, {self.fixed:.3g} ms outside the blocks"
        )

    def markdown(self, depth: int) -> str:
        """The table as markdown, with what each uniform architecture of `depth` blocks would take."""
        lines = [
            f"Latency table ({self.describe()})",
            "",
            "| part | ms | uniform model |",
            "|---|---|---|",
        ]
        for kind, ms in self.blocks.items():
            lines.append(f"| one `{kind}` block | {ms:.3f} | `{kind * depth}`: {self.predict(kind * depth):.2f} ms |")
        lines.append(f"| outside the blocks | {self.fixed:.3f} | |")
        if self.check:
            lines += ["", "| architecture | measured ms | table ms | error |", "|---|---|---|---|"]
            for arch, c in self.check.items():
                err = c["predicted"] / c["measured"] - 1
                lines.append(f"| `{arch}` | {c['measured']:.2f} | {c['predicted']:.2f} | {err:+.1%} |")
        return "\n".join(lines) + "\n"


class LatencyBudget:
    """Feasibility of an architecture under a latency limit read from a `LatencyTable`: `max_ms` absolute, `max_ratio`
    of the teacher's latency (`teacher`, its architecture); both may be given (the tighter wins) or neither."""

    def __init__(self, table: LatencyTable, teacher: str, *, max_ms: float | None, max_ratio: float | None) -> None:
        self.table, self.teacher = table, teacher
        limits = []
        if max_ms is not None:
            limits.append(max_ms)
        if max_ratio is not None:
            limits.append(max_ratio * table.predict(teacher))
        self.limit = min(limits) if limits else None

    def reason(self, arch: str) -> str | None:
        """None when `arch` fits the limit, else why not."""
        if self.limit is None:
            return None
        ms = self.table.predict(arch)
        return None if ms <= self.limit else f"{ms:.4g} ms over the latency budget {self.limit:.4g} ms"

    def check_reachable(self, letters: str, depth: int) -> None:
        """ValueError when even the fastest architecture of the search space (each block its fastest kind among
        `letters`) is over the limit."""
        if self.limit is None:
            return
        fastest = min(letters, key=self.table.blocks.__getitem__) * depth
        if self.reason(fastest) is not None:
            raise ValueError(
                f"the latency budget ({self.limit:.4g} ms: budget.max_latency_ms / budget.max_latency_ratio) cannot "
                f"be met: the fastest architecture, {fastest}, takes {self.table.predict(fastest):.4g} ms "
                f"({self.table.describe()}); raise the budget"
            )


def all_of(*checks: Callable[[str], str | None] | None) -> Callable[[str], str | None]:
    """One feasibility check from several: the first reason any of them gives."""
    live = [c for c in checks if c is not None]

    def reason(arch: str) -> str | None:
        for c in live:
            r = c(arch)
            if r is not None:
                return r
        return None

    return reason


def pareto_front(points: Iterable[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The (arch, score, ms) points no other point beats on both (at least as good on both and better on one), fastest
    first. Equal points keep the first given."""
    pts = list(points)
    front = []
    for a, s, t in pts:
        dominated = any((s2 >= s and t2 <= t) and (s2 > s or t2 < t) for _, s2, t2 in pts)
        if not dominated and not any(s == s2 and t == t2 for _, s2, t2 in front):
            front.append((a, s, t))
    return sorted(front, key=lambda p: (p[2], -p[1]))


def pick_fastest(points: Iterable[tuple[str, float, float]], reference: float, tolerance: float) -> str | None:
    """The fastest architecture whose score is within `tolerance` below `reference` (ties: the better score), or None
    when no point is."""
    ok = [(t, -s, a) for a, s, t in points if s >= reference - tolerance]
    return min(ok)[2] if ok else None


SAME_LATENCY = 0.01  # front points predicted within 1% of each other's latency are one point for the measuring


def points_to_measure(front: list[tuple[str, float, float]], keep: Iterable[str], pick: str, n: int) -> list[str]:
    """At most `n` architectures of `front` (fastest first) to distil and time: every one of `keep` (the picks), then
    the front's points just faster than `pick` (the latency pick on the supernet's scores), nearest first, then the
    slower ones, nearest first.

    The points just faster than the pick are the ones that can replace it: the supernet underrates the paths with
    fewer `F` blocks (they learn slower, and each saw fewer steps), so a point just outside the tolerance on the
    supernet's scores may be inside it once distilled; a point far down the front, much faster and much worse, would
    not be picked however it measured. A point predicted within `SAME_LATENCY` of one already chosen is skipped: it
    could only trade score for no speed (on the built-in teacher's front, a 2-F path 0.2 ms faster than the paper's
    pick because its F replaced an L rather than a W)."""
    chosen = list(dict.fromkeys(keep))
    ms = {a: t for a, _, t in front}
    order = [a for a, _, _ in front]
    at = order.index(pick) if pick in order else len(order)
    faster = [a for a in reversed(order[:at]) if a not in chosen]
    slower = [a for a in order[at + 1 :] if a not in chosen]
    for a in faster + slower:
        if len(chosen) >= n:
            break
        if not any(abs(ms[a] - ms[c]) <= SAME_LATENCY * ms[c] for c in chosen if c in ms):
            chosen.append(a)
    return chosen[: max(n, len(dict.fromkeys(keep)))]
