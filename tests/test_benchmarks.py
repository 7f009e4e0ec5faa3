"""The learning-curve and ranking benchmarks end to end on a tiny teacher (slow; the replication's is in
test_demo_replicate.py), and their statistics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import learning_curves  # noqa: E402


@pytest.mark.slow
def test_learning_curves_tiny_writes_curves_and_convergence(tmp_path):
    assert learning_curves.main(["--tiny", "--out", str(tmp_path), "--seeds", "0", "1"]) == 0
    res = json.loads((tmp_path / "learning_curves.json").read_text())
    assert set(res["rows"]) == {"pure L", "2 F"}
    for row in res["rows"].values():
        assert row["seeds"] == [0, 1]
        steps = [p["step"] for p in row["points"]]
        assert steps == [0, 2, 4]  # before training, then every 2 of the 4 steps
        assert all(0.0 <= p["mean"] <= 1.0 and p["n"] == 2 for p in row["points"])
        assert row["converged_step"] in steps
    md = (tmp_path / "learning_curves.md").read_text()
    assert "| pure L |" in md and "| 2 F |" in md
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    # A rerun reuses every finished run: nothing is trained again.
    before = {p: p.stat().st_mtime for p in (tmp_path / "curves-work").glob("*/result.json")}
    assert len(before) == 4
    learning_curves.main(["--tiny", "--out", str(tmp_path), "--seeds", "0", "1"])
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "curves-work").glob("*/result.json")}
    # --report-only tabulates what is finished and trains nothing (seed 2 was never run).
    learning_curves.main(["--tiny", "--out", str(tmp_path), "--seeds", "0", "1", "2", "--report-only"])
    assert len(list((tmp_path / "curves-work").glob("*/result.json"))) == 4
    res = json.loads((tmp_path / "learning_curves.json").read_text())
    assert all(row["seeds"] == [0, 1] for row in res["rows"].values())


def test_converged_at_is_the_first_step_near_the_best():
    pts = [(0, 0.50), (100, 0.58), (200, 0.601), (300, 0.604), (400, 0.603)]
    assert learning_curves.converged_at(pts, tol=0.5) == 200  # 60.1 is within 0.5 points of 60.4
    assert learning_curves.converged_at(pts, tol=0.1) == 300
    assert learning_curves.converged_at([], tol=0.5) is None


def test_rank_statistics_against_scipy():
    import numpy as np
    import ranking
    from scipy import stats

    rng = np.random.default_rng(0)
    for ties in (False, True):
        x = rng.integers(0, 4, 9).tolist() if ties else rng.normal(size=9).tolist()
        y = rng.integers(0, 4, 9).tolist() if ties else rng.normal(size=9).tolist()
        assert abs(ranking.kendall_tau(x, y) - stats.kendalltau(x, y).statistic) < 1e-12
        assert abs(ranking.spearman_rho(x, y) - stats.spearmanr(x, y).statistic) < 1e-12
    # Hand-worked: one swapped pair out of 3 -> (2 - 1) / 3.
    assert abs(ranking.kendall_tau([1, 2, 3], [1, 3, 2]) - 1 / 3) < 1e-12
    # All scores tied: no order to compare. Said as None, never as a NaN (which passes every range check).
    assert ranking.kendall_tau([0.5, 0.5, 0.5], [1, 2, 3]) is None
    assert ranking.spearman_rho([1, 2, 3], [4, 4, 4]) is None
    a = ranking.agreement({"A": 0.3, "B": 0.2, "C": 0.1}, {"A": 0.5, "B": 0.7, "C": 0.1})
    assert a["pick"] == "A" and not a["pick_is_best"] and abs(a["regret"] - 0.2) < 1e-12


def test_ranking_ground_truth_averages_alone_seeds_and_measures_their_noise():
    """Several alone seeds: the truth is each path's mean; `between_seeds` is the seeds' own agreement (a swapped
    pair of 3 paths: tau 1/3 both ways) and `cross_ceiling` scores one seed's runs against the other's eval."""
    import ranking

    def run(evals, scores):
        return {p: {"eval": e, "search_score": s, "train_seconds": 1.0} for p, e, s in zip("ABC", evals, scores)}

    runs = {0: run([0.5, 0.4, 0.3], [0.5, 0.4, 0.3]), 1: run([0.7, 0.2, 0.3], [0.1, 0.2, 0.3])}
    alone, noise = ranking.ground_truth(runs)
    assert alone["A"]["eval"] == pytest.approx(0.6) and alone["B"]["search_score"] == pytest.approx(0.3)
    assert alone["C"]["train_seconds"] == 2.0 and alone["A"]["by_seed"]["1"]["eval"] == 0.7
    assert noise["between_seeds"]["kendall_tau"] == pytest.approx(1 / 3)
    # seed 1's scores (increasing C > B > A) against seed 0's eval (A > B > C): -1; seed 0's against seed 1's: 1/3
    assert noise["cross_ceiling"]["kendall_tau"] == pytest.approx((-1 + 1 / 3) / 2)
    one, none = ranking.ground_truth({0: runs[0]})
    assert none == {} and one["A"]["eval"] == 0.5 and one["A"]["search_score"] == 0.5


def test_ranking_combine_checks_every_seed_against_its_ceiling(tmp_path):
    """`--combine`: the goal holds for a way of training only when every seed (two or more) over 16 or more paths
    reaches 90% of its noise ceiling; a missing result is named."""
    import ranking

    def result(name, sampling, seed, tau, ceiling, paths=16):
        final = {"kendall_tau": tau, "pick_is_best": True, "regret": 0.0}
        res = {"args": {"seed": seed, "supernet_steps": 150}, "sampling": sampling, "paths": ["x"] * paths,
               "score_samples": 32, "supernet_seconds": 60.0, "by_step": {"0": {}, "150": final},
               "ceiling": {"kendall_tau": ceiling}}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(res))

    result("a0", "blockwise", 0, 0.60, 0.64)
    result("a1", "blockwise", 1, 0.58, 0.64)  # 90.6%
    result("b0", "uniform", 0, 0.64, 0.64)
    result("b1", "uniform", 1, 0.50, 0.64)  # 78%
    result("d0", "blockwise-student", 0, 0.60, 0.64)
    result("d1", "blockwise-student", 1, 0.5744, 0.64)  # 89.75%: shown as such, not rounded up to a passing 90%
    result("c0", "balanced", 0, 0.64, 0.64, paths=8)
    result("c1", "balanced", 1, 0.64, 0.64, paths=8)
    text = ranking.combine(["a0", "a1", "b0", "b1", "c0", "c1", "d0", "d1"], tmp_path, "seeds")
    met = json.loads((tmp_path / "seeds.json").read_text())["goal_met"]
    assert met == {"blockwise, 150 steps, 32 samples": True, "uniform, 150 steps, 32 samples": False,
                   "balanced, 150 steps, 32 samples": False,
                   "blockwise-student, 150 steps, 32 samples": False}  # fmt: skip
    assert "| blockwise, 150 steps, 32 samples | 1 | 16 (1) | 1.0 | 0.58 | 0.64 | 90.6% |" in text
    assert "| 89.8% |" in text
    with pytest.raises(FileNotFoundError, match="no ranking result .*zz.json"):
        ranking.combine(["a0", "zz"], tmp_path, "seeds")


@pytest.mark.slow
def test_ranking_tiny_end_to_end(tmp_path):
    import ranking

    assert ranking.main(["--tiny", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "ranking.json").read_text())
    assert len(res["paths"]) == 4 == len(set(res["paths"]))
    assert "LLLL" in res["paths"] and "WWWW" in res["paths"]
    assert list(res["supernet"]) == ["0", "2", "4"]  # inheritance, then every 2 of the 4 supernet steps
    for row in res["supernet"].values():
        assert set(row) == set(res["paths"]) and all(0.0 <= v <= 1.0 for v in row.values())
    assert set(res["by_step"]) == {"0", "2", "4"}
    truth = [res["alone"][p]["eval"] for p in res["paths"]]
    rows = {f"step {s}": (res["supernet"][s], a) for s, a in res["by_step"].items()}
    rows["final on eval"] = (res["supernet_eval"], res["final_on_eval"])
    rows["ceiling"] = ({p: r["search_score"] for p, r in res["alone"].items()}, res["ceiling"])
    for name, (scores, stats) in rows.items():
        tied = len(set(truth)) == 1 or len({scores[p] for p in res["paths"]}) == 1
        for stat in ("kendall_tau", "spearman_rho"):
            value = stats[stat]
            assert (value is None) if tied else (isinstance(value, float) and -1.0 <= value <= 1.0), (name, stat, value)
    assert "nan" not in (tmp_path / "ranking.md").read_text().lower()
    assert (tmp_path / "ranking.png").stat().st_size > 0 and "Kendall tau" in (tmp_path / "ranking.md").read_text()
    # A rerun trains nothing again: the supernet is done and every path's result is cached.
    before = {p: p.stat().st_mtime for p in (tmp_path / "ranking-work").rglob("result.json")}
    assert len(before) == 4
    ranking.main(["--tiny", "--out", str(tmp_path)])
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "ranking-work").rglob("result.json")}
    # The other ways of training the supernet: their own supernet folder, the same alone runs (the ground truth).
    assert res["sampling"] == "blockwise"  # the default
    for sampling in ("balanced", "uniform"):
        name = f"ranking-{sampling}"
        argv = ["--tiny", "--out", str(tmp_path), "--set", f"supernet.sampling={sampling}", "--name", name]
        assert ranking.main(argv) == 0
        other = json.loads((tmp_path / f"{name}.json").read_text())
        assert other["sampling"] == sampling and other["alone"] == res["alone"]
        assert list(other["supernet"]) == ["0", "2", "4"] and other["supernet"]["0"] == res["supernet"]["0"]
        assert (tmp_path / "ranking-work" / f"supernet-{sampling}-4-2-4p-seed0" / "ckpt.pt").is_file()
    # Another supernet seed against the same ground truth: its own supernet, the same paths and alone runs.
    argv = ["--tiny", "--out", str(tmp_path), "--seed", "1", "--truth-seed", "0", "--name", "ranking-seed1"]
    assert ranking.main(argv) == 0
    seed1 = json.loads((tmp_path / "ranking-seed1.json").read_text())
    assert seed1["paths"] == res["paths"] and seed1["alone"] == res["alone"] and seed1["truth_seed"] == 0
    assert seed1["args"]["seed"] == 1 and (tmp_path / "ranking-work" / "supernet-blockwise-4-2-4p-seed1").is_dir()
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "ranking-work").rglob("result.json")}
    # The table over seeds: two blockwise seeds, one balanced, one uniform; 4 paths cannot meet the goal.
    names = ["ranking", "ranking-seed1", "ranking-balanced", "ranking-uniform"]
    assert ranking.main(["--out", str(tmp_path), "--combine", *names, "--name", "ranking-seeds"]) == 0
    combined = json.loads((tmp_path / "ranking-seeds.json").read_text())
    assert [r["seed"] for r in combined["runs"]] == [0, 1, 0, 0]
    assert combined["goal_met"] == {f"{s}, 4 steps, 2 samples": False for s in ("uniform", "balanced", "blockwise")}
    # A scorer with more samples scores the kept alone models again for its own ceiling (no alone run is trained).
    argv = ["--tiny", "--out", str(tmp_path), "--score-samples", "3", "--name", "ranking-s3"]
    assert ranking.main(argv) == 0
    s3 = json.loads((tmp_path / "ranking-s3.json").read_text())
    assert s3["ceiling_samples"] == [3] and s3["score_samples"] == 3
    for p in res["paths"]:
        kept = json.loads((tmp_path / "ranking-work" / "alone" / p / "result.json").read_text())
        assert kept["search_samples"] == 2 and s3["alone"][p]["search_score"] == kept["search_score_3"]
    # A second alone seed: the same paths distilled again in their own folder; the truth is the mean over the seeds,
    # and the seeds' agreement with each other is reported as the truth's own noise.
    seed0_mtimes = {p: p.stat().st_mtime for p in (tmp_path / "ranking-work" / "alone").rglob("result.json")}
    argv = ["--tiny", "--out", str(tmp_path), "--alone-seeds", "0", "1", "--name", "ranking-2seeds"]
    assert ranking.main(argv) == 0
    two = json.loads((tmp_path / "ranking-2seeds.json").read_text())
    again = {
        p: json.loads((tmp_path / "ranking-work" / "alone-distil1" / p / "result.json").read_text())
        for p in res["paths"]
    }
    for p in res["paths"]:
        assert two["alone"][p]["eval"] == pytest.approx((res["alone"][p]["eval"] + again[p]["eval"]) / 2)
        assert two["alone"][p]["by_seed"]["1"]["eval"] == again[p]["eval"]
    assert two["alone_seeds"] == [0, 1] and set(two["truth_noise"]) == {"between_seeds", "cross_ceiling"}
    assert len(two["truth_noise"]["between_seeds"]["pairs"]) == 2
    assert "the ground truth's own noise" in (tmp_path / "ranking-2seeds.md").read_text()
    assert seed0_mtimes == {p: p.stat().st_mtime for p in (tmp_path / "ranking-work" / "alone").rglob("result.json")}


@pytest.mark.slow  # two exports and both runtimes: about a minute
def test_deploy_cpu_dry_run_times_both_graphs_in_both_runtimes(tmp_path, capsys):
    """The CPU deployment benchmark on the tiny preset: one row per runtime and size, the hybrid's graph in the asked
    form of the per-image convolution, the settings that change the timings recorded."""
    pytest.importorskip("onnxruntime")
    import deploy_cpu

    runtimes = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        runtimes.append("openvino")
    except ImportError:
        pass
    stem = tmp_path / "deploy"
    assert deploy_cpu.main(["--dry-run", "--runtimes", *runtimes, "--out", str(stem)]) == 0
    res = json.loads(stem.with_suffix(".json").read_text())
    assert [(r["runtime"], r["res"]) for r in res["rows"]] == [(rt, [s, s]) for rt in runtimes for s in (64, 96)]
    assert res["conv"] == "grouped" and res["batch"] == 1 and "malloc_hugetlb" in res and "thp" in res
    for row in res["rows"]:
        assert row["teacher_ms"]["median"] > 0 and row["hybrid_ms"]["median"] > 0 and row["ideal"] > 0
    table = capsys.readouterr().out
    assert "per-image convolution: grouped" in table and "| onnxruntime | 64x64 |" in table
