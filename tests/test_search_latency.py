"""The latency table, its budget, the front and the picks (`jetvit.search.latency`, `jetvit.bench.latency`,
`jetvit.front`), and the supernet's balanced sampling."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from jetvit.bench import latency as bench_latency
from jetvit.config import load_config
from jetvit.front import (
    compute,
    drop_points,
    final_pick,
    finetune_stages,
    front_rows,
    picks,
    point_phase,
    step1_pick,
    warm_start,
)
from jetvit.rundir import RunState
from jetvit.runtime import Runtime
from jetvit.search.latency import (
    LatencyBudget,
    LatencyTable,
    all_of,
    pareto_front,
    pick_fastest,
    points_to_measure,
)
from jetvit.search.supernet import PathSampler, sample_path

TABLE = LatencyTable(blocks={"F": 10.0, "W": 4.0, "L": 3.0}, fixed=2.0, setting={"source": "measured", "device": "cpu"})


def test_table_predicts_additively_and_refuses_unknown_kinds():
    assert TABLE.predict("FFFF") == 42.0
    assert TABLE.predict("LWLF") == 2.0 + 3 + 4 + 3 + 10
    assert TABLE.speedup("LLLL", "FFFF") == pytest.approx(42 / 14)
    small = LatencyTable(blocks={"L": 1.0}, fixed=0.0, setting={})
    with pytest.raises(ValueError, match="no time for block kind W"):
        small.predict("LW")


def test_table_round_trips_and_rejects_bad_data():
    assert LatencyTable.from_dict(json.loads(json.dumps(TABLE.to_dict()))) == TABLE
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.from_dict({"blocks": {"F": 1.0}})
    with pytest.raises(ValueError, match="finite, non-negative"):
        LatencyTable.from_dict({"blocks": {"F": float("nan")}, "fixed": 0.0, "setting": {}})
    md = TABLE.markdown(4)
    assert "one `W` block | 4.000" in md and "`FFFF`: 42.00 ms" in md


def test_latency_budget_absolute_ratio_and_unreachable():
    b = LatencyBudget(TABLE, "FFFF", max_ms=None, max_ratio=0.5)  # 21 ms
    assert b.limit == 21.0
    assert b.reason("LLLW") is None  # 2 + 9 + 4 = 15
    assert "over the latency budget 21" in b.reason("LLFW")  # 2 + 6 + 10 + 4 = 22
    assert LatencyBudget(TABLE, "FFFF", max_ms=16.0, max_ratio=0.5).limit == 16.0  # the tighter wins
    assert LatencyBudget(TABLE, "FFFF", max_ms=None, max_ratio=None).reason("FFFF") is None
    with pytest.raises(ValueError, match="fastest architecture, LLLL, takes 14 ms"):
        LatencyBudget(TABLE, "FFFF", max_ms=13.0, max_ratio=None).check_reachable("LW", 4)
    LatencyBudget(TABLE, "FFFF", max_ms=14.0, max_ratio=None).check_reachable("LW", 4)


def test_all_of_gives_the_first_reason():
    check = all_of(None, lambda a: None, lambda a: "too many F" if a.count("F") > 1 else None, lambda a: "never")
    assert check("LF") == "never"
    assert check("FF") == "too many F"
    assert all_of(None)("LL") is None


def test_pareto_front_keeps_only_undominated_points_fastest_first():
    pts = [("a", 50.0, 10.0), ("b", 55.0, 12.0), ("c", 54.0, 13.0), ("d", 60.0, 20.0), ("e", 50.0, 11.0),
           ("f", 60.0, 20.0)]  # fmt: skip
    assert [a for a, _, _ in pareto_front(pts)] == ["a", "b", "d"]  # c by b, e by a; f equals d: the first kept


def test_pick_fastest_within_tolerance():
    pts = [("slow", 62.0, 20.0), ("mid", 61.7, 15.0), ("fast", 60.0, 10.0)]
    assert pick_fastest(pts, reference=62.1, tolerance=0.5) == "mid"
    assert pick_fastest(pts, reference=62.1, tolerance=3.0) == "fast"
    assert pick_fastest(pts, reference=70.0, tolerance=0.5) is None
    tie = [("x", 61.0, 10.0), ("y", 61.5, 10.0)]
    assert pick_fastest(tie, reference=61.0, tolerance=0.0) == "y"  # same speed: the better score


def test_points_to_measure_probe_just_faster_than_the_pick():
    front = [(f"a{i}", float(i), float(i)) for i in range(9)]  # fastest (and worst) first
    # the picks, then the points just faster than the latency pick (a5), nearest first, then slower ones
    assert points_to_measure(front, ["a7", "a5", "a5"], "a5", 5) == ["a7", "a5", "a4", "a3", "a2"]
    assert points_to_measure(front, ["a8", "a1"], "a1", 4) == ["a8", "a1", "a0", "a2"]
    assert points_to_measure(front[:2], ["a1"], "a1", 5) == ["a1", "a0"]
    assert points_to_measure(front, ["a7", "a5"], "a5", 1) == ["a7", "a5"]  # the picks always
    # a point predicted within 1% of a chosen one's latency buys no speed: the next one is measured instead
    close = [("b0", 50.0, 300.0), ("b1", 55.0, 386.0), ("b2", 57.0, 467.2), ("b3", 58.0, 467.4)]
    assert points_to_measure(close, ["b3"], "b3", 2) == ["b3", "b1"]
    assert points_to_measure(close, ["b3"], "b3", 4) == ["b3", "b1", "b0"]


def _traj(scores: dict[str, float], best: str) -> dict:
    return {"scores": scores, "best": {"arch": best, "score": scores[best]}}


def test_picks_paper_against_latency():
    traj2 = _traj({"LLWW": 58.0, "LFWW": 61.8, "FLWW": 61.0, "FFWW": 62.1}, "FFWW")
    chosen = picks(traj2, TABLE, teacher_score=62.3, tolerance=0.5)
    assert chosen["paper"]["arch"] == "FFWW"
    assert chosen["latency"]["arch"] == "LFWW"  # 61.8 >= 61.8, and one F fewer
    assert chosen["latency"]["ms"] == TABLE.predict("LFWW")
    none_close = picks(traj2, TABLE, teacher_score=70.0, tolerance=0.5)
    assert none_close["latency"]["arch"] == "FFWW" and "best" in none_close["latency"]["why"]
    # Step 1: the fastest L/W path within the tolerance of Step 1's best
    assert step1_pick(_traj({"LLLL": 50.0, "LLLW": 54.8, "WWWW": 55.0}, "WWWW"), TABLE, tolerance=0.5) == "LLLW"


def test_final_pick_reads_the_measured_front():
    chosen = picks(_traj({"LFWW": 61.8, "FFWW": 62.1}, "FFWW"), TABLE, teacher_score=62.3, tolerance=0.5)
    measured = {
        "LFWW": {"score": 61.5, "ms": 15.0, "speedup": 2.0, "steps": 3},
        "FFWW": {"score": 62.2, "ms": 20.0, "speedup": 1.5, "steps": 3},
    }
    front = {"measured": measured, "teacher_score": 62.3}
    assert final_pick(front, chosen, criterion="paper", tolerance=0.5)[0] == "FFWW"
    arch, why = final_pick(front, chosen, criterion="latency", tolerance=0.5)
    assert arch == "FFWW" and "measured" in why  # LFWW fell out of the tolerance once distilled
    arch, _ = final_pick(front, chosen, criterion="latency", tolerance=1.0)
    assert arch == "LFWW"
    assert final_pick({"measured": {}}, chosen, criterion="latency", tolerance=0.5)[0] == "LFWW"

    # objective.reference front: held to the best measured point where it falls short of the teacher, never above it
    def pick(teacher, lf, ff, reference):
        pts = {"LFWW": {"score": lf, "ms": 15.0, "steps": 3}, "FFWW": {"score": ff, "ms": 20.0, "steps": 3}}
        return final_pick({"measured": pts, "teacher_score": teacher}, chosen, criterion="latency", tolerance=0.5,
                          reference=reference)  # fmt: skip

    assert pick(62.9, 61.8, 62.2, "teacher")[0] == "FFWW"  # 1.1 below the teacher
    arch, why = pick(62.9, 61.8, 62.2, "front")
    assert arch == "LFWW" and "the best measured point (FFWW, below the teacher)" in why  # 0.4 below FFWW
    assert pick(62.9, 61.6, 62.2, "front")[0] == "FFWW"  # 0.6 below FFWW
    assert pick(62.0, 61.6, 62.6, "front")[0] == "LFWW"  # FFWW above the teacher: the teacher is the reference
    # the tolerance is to the teacher's score by the front's own scorer (`front.score_options`), not the search's
    by_front_scorer = {"measured": measured, "teacher_score": 61.9}
    assert final_pick(by_front_scorer, chosen, criterion="latency", tolerance=0.5)[0] == "LFWW"
    assert [r["below_teacher"] for r in front_rows({**by_front_scorer, "points": [], "pareto": []})] == pytest.approx(
        [0.4, -0.3]
    )


def test_compute_counts_the_front_against_a_paper_style_search():
    cfg = load_config("tiny", ["front.steps=2"])  # tiny: the fine-tuning runs 6 steps in full
    phases = {
        "step1": {"result": {"steps": 10}, "seconds": 10.0},
        "search1": {"result": {}, "seconds": 2.0},
        "step2": {"result": {"steps": 10}, "seconds": 12.0},
        "search2": {"result": {}, "seconds": 1.0},
        "latency": {"seconds": 3.0},
        "front": {"result": {"pareto": 4, "measured": 3}, "seconds": 9.0},
        "finetune": {"result": {"steps": 4}, "seconds": 8.0},  # continued from its point: 6 - 2
    }
    c = compute(phases, cfg)
    assert (c["steps"], c["paper_steps"], c["front_steps"]) == (20 + 6 + 4, 20 + 6, 6)
    assert c["seconds"] == 25.0 + 3.0 + 9.0 + 8.0 and c["paper_seconds"] == 25.0 + 8.0 * 6 / 4


class _Ctx:
    """What `jetvit.front.warm_start` reads of a `jetvit.pipeline.RunContext`, with a recording `exp.distill`."""

    def __init__(self, out, overrides):
        self.cfg = load_config("tiny", ["front.steps=2", *overrides])  # tiny: finetune.stages[0] runs 6 steps
        self.out, self.distilled = out, []
        self.state = RunState(out / "state.json", Runtime(torch.device("cpu")))
        self.exp = self

    def ckpt(self, phase):
        return self.out / "ckpt" / f"{phase}.pt"

    def distill(self, model, *, ckpt_path, stages, logger):
        self.distilled.append((ckpt_path.name, [s.steps for s in stages]))

    def drop_checkpoint(self, phase):
        if self.cfg.run.keep_checkpoints == "last":
            self.ckpt(phase).unlink(missing_ok=True)


def test_fine_tuning_continues_the_picks_front_point(tmp_path):
    front = {"measured": {"LFWW": {"steps": 2}, "FFWW": {"steps": 2}}}
    (tmp_path / "ckpt").mkdir()
    for arch in front["measured"]:
        (tmp_path / "ckpt" / f"{point_phase(arch)}.pt").write_bytes(b"a finished point")
    ctx = _Ctx(tmp_path, [])
    stages = warm_start(ctx, torch.nn.Identity(), "LFWW", front)
    assert [s.steps for s in stages] == [4]  # 6 - front.steps
    assert (
        stages[0].lr == ctx.cfg.finetune.stages[0].lr and stages[0].resolution == ctx.cfg.finetune.stages[0].resolution
    )
    assert ctx.distilled == [("front-LFWW.pt", [2])]  # the point's own (finished) distillation: its weights
    assert json.loads((tmp_path / "state.json").read_text())["phases"]["front_reuse"] == {"arch": "LFWW", "steps": 2}
    # resumed after the fine-tuning started: the same stages, its own checkpoint and not the point's weights
    ctx.ckpt("finetune").write_bytes(b"started")
    for arch in front["measured"]:
        ctx.ckpt(point_phase(arch)).unlink()
    again = _Ctx(tmp_path, [])
    assert [s.steps for s in warm_start(again, torch.nn.Identity(), "LFWW", front)] == [4] and again.distilled == []
    assert [s.steps for s in finetune_stages(again.cfg, again.state)] == [4]  # what the run-wide step counts
    # not continued: a pick never distilled, no point checkpoint, front.reuse off, a first stage as short as the front
    (tmp_path / "ckpt" / "front-FFWW.pt").write_bytes(b"a finished point")
    for arch, overrides in [("LLWW", []), ("LFWW", []), ("FFWW", ["front.reuse=false"]), ("FFWW", ["front.steps=6"])]:
        for f in ("state.json", "ckpt/finetune.pt"):
            (tmp_path / f).unlink(missing_ok=True)
        ctx = _Ctx(tmp_path, overrides)
        assert [s.steps for s in warm_start(ctx, torch.nn.Identity(), arch, front)] == [6], (arch, overrides)
        assert ctx.distilled == [] and ctx.state.done("front_reuse") is None
        assert [s.steps for s in finetune_stages(ctx.cfg, ctx.state)] == [6]
    # the points' checkpoints go with the fine-tuning's end (run.keep_checkpoints: last), kept with `all`
    drop_points(_Ctx(tmp_path, ["run.keep_checkpoints=all"]), front)
    assert (tmp_path / "ckpt" / "front-FFWW.pt").is_file()
    drop_points(_Ctx(tmp_path, []), front)
    assert not list((tmp_path / "ckpt").glob("front-*"))


def test_balanced_sampling_gives_every_kind_its_turn():
    choices = ["LW", "LW", "LWF", "LF"]
    paths = [sample_path(choices, seed=3, phase="step1", step=s, sampling="balanced") for s in range(12)]
    for i, c in enumerate(choices):
        m = len(c)
        for turn in range(12 // m):
            got = sorted(p[i] for p in paths[turn * m : (turn + 1) * m])
            assert got == sorted(c), (i, turn, got)
    again = [sample_path(choices, seed=3, phase="step1", step=s, sampling="balanced") for s in range(12)]
    other = [sample_path(choices, seed=4, phase="step1", step=s, sampling="balanced") for s in range(12)]
    assert paths == again and paths != other
    with pytest.raises(ValueError, match="sampling 'blockwise' is not one of uniform, balanced"):
        PathSampler(choices, seed=0, phase="step1", sampling="blockwise")


def test_uniform_sampling_is_unchanged():
    # the paper's sampling keeps its sequence (resumed runs and the committed benchmarks depend on it)
    choices = ["LW"] * 6
    a = [sample_path(choices, seed=0, phase="step1", step=s) for s in range(5)]
    b = [sample_path(choices, seed=0, phase="step1", step=s, sampling="uniform") for s in range(5)]
    assert a == b


# --- tables measured and predicted --------------------------------------------------------------------------------


@pytest.fixture
def tiny_cfg():
    from jetvit.bench.presets import preset_config

    return preset_config("tiny")


def test_measured_table_times_every_kind_and_checks_whole_models(tiny_cfg):
    table = bench_latency.measure_table(tiny_cfg, resolution=(64, 64), repeats=1, warmup=0)
    assert set(table.blocks) == {"F", "W", "L"} and all(v > 0 for v in table.blocks.values()) and table.fixed > 0
    s = table.setting
    assert s["source"] == "measured" and s["resolution"] == [64, 64] and s["threads"] == torch.get_num_threads()
    depth = tiny_cfg.depth
    assert set(table.check) == {"F" * depth, "W" * depth, "L" * depth, ("FWL" * depth)[:depth]}
    for arch, c in table.check.items():
        assert c["measured"] > 0 and c["predicted"] == pytest.approx(table.predict(arch))
    with pytest.raises(ValueError, match="multiple"):
        bench_latency.measure_table(tiny_cfg, resolution=(65, 64), repeats=1, check=False)


def test_predicted_table_adds_up_to_the_cost_model(tiny_cfg):
    table = bench_latency.predict_table(tiny_cfg, device="h100", dtype="bf16", resolution=(256, 256))
    assert table.setting["source"] == "predicted" and "cost model" in table.setting["device_name"]
    ((arch, c),) = table.check.items()
    # a block's time in the cost model depends a little on its neighbours (launch overlap): within 5%
    assert c["predicted"] == pytest.approx(c["measured"], rel=0.05)
    # a tiny model at 256 px is launch-bound on an H100, where an L block's extra kernels cost more than F's
    # attention; at 2048 px full attention's N^2 dominates: what FLOPs alone do not see
    assert table.blocks["L"] > table.blocks["F"]
    large = bench_latency.predict_table(tiny_cfg, device="h100", dtype="bf16", resolution=(2048, 2048))
    assert large.blocks["F"] > 2 * large.blocks["L"]


def test_tables_are_cached_per_setting(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("JETVIT_CACHE", str(tmp_path))
    kw = dict(source="predicted", device="h100", dtype="bf16", resolution=(128, 128))
    first, cached = bench_latency.table_for(tiny_cfg, **kw)
    assert not cached and len(list((tmp_path / "latency").glob("*.json"))) == 1
    again, cached = bench_latency.table_for(tiny_cfg, **kw)
    assert cached and again == first
    other, cached = bench_latency.table_for(dataclasses.replace(tiny_cfg, window_size=2), **kw)
    assert not cached  # another students' config is another table
    (path,) = [p for p in (tmp_path / "latency").glob("*.json") if json.loads(p.read_text()) == first.to_dict()]
    path.write_text("{broken")
    repaired, cached = bench_latency.table_for(tiny_cfg, **kw)
    assert not cached and repaired == first and json.loads(path.read_text()) == first.to_dict()
    with pytest.raises(ValueError, match="unknown cost-model device 'tpu'"):
        bench_latency.table_for(tiny_cfg, source="predicted", device="tpu", dtype="bf16", resolution=(128, 128))
