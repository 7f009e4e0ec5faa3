"""`make demo`'s runner end to end on a tiny teacher: search, eval and bench through the real CLI, then the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jetvit.demo.teacher import tiny_teacher

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_demo_runner_end_to_end_on_a_tiny_teacher(tmp_path):
    teacher = tiny_teacher(tmp_path)
    stage = "{resolution: 32, steps: 2, batch_size: 2, lr: 1.0e-3}"
    overrides = [
        "score.resolution=32", "score.options.samples=2", "score.options.size=32", "budget.resolution=128",
        f"step1.stages=[{stage}]", f"step2.stages=[{stage}]", f"finetune.stages=[{stage}]", "step1.beam.max_rounds=1",
        "step2.beam.max_rounds=1", "data.holdout=2", "front.steps=2", "latency.repeats=1",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "jetvit.demo.run", "--out", str(tmp_path / "demo"), "--teacher", str(teacher),
           "--val-images", "2", "--figures", "1"]  # fmt: skip
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    out = tmp_path / "demo"
    summary = json.loads((out / "search" / "summary.json").read_text())
    assert len(summary["arch"]) == 4 and summary["arch"].count("F") <= 1
    results = json.loads((out / "eval" / "results.json").read_text())["results"]
    assert set(results) == {"teacher", "student"}
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert [row["res"] for row in bench["rows"]] == [[32, 32], [128, 128]]
    report = (out / "REPORT.md").read_text()
    assert summary["arch"] in report and "eval/figures/000.png" in report
    assert (out / "eval" / "figures" / "000.png").is_file() and (out / "search" / "architecture.png").is_file()
    assert f"student  {summary['arch']}" in proc.stdout and "speedup at 128x128" in proc.stdout
    # the demo's search is latency-aware: the front is measured, printed and linked
    assert summary["criterion"] == "latency" and summary["picks"]["paper"]["arch"]
    assert "front (latency criterion" in proc.stdout and "search/front.png" in report
    assert f"against a paper-style search: {summary['compute']['steps']} training steps for" in proc.stdout
    assert (out / "search" / "front.png").is_file() and "## Accuracy against latency" in (
        out / "search" / "report.md"
    ).read_text()

    # the latency pick against the paper's, both fine-tuned in full (benchmarks/latency_pick.py)
    bench_dir = tmp_path / "pick"
    cmd = [sys.executable, str(BENCHMARKS / "latency_pick.py"), "--run", str(out / "search"), "--out", str(bench_dir),
           "--eval-samples", "2", "--repeats", "1"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    res = json.loads((bench_dir / "latency_pick.json").read_text())
    assert res["archs"]["latency pick"] == summary["arch"]
    assert set(res["speedup"]) == {"latency pick"} | (
        {"paper pick"} if "paper pick" in res["archs"] and res["archs"]["paper pick"] != summary["arch"] else set()
    )
    assert all(0.0 <= v <= 1.0 for v in res["scores"].values()) and res["ms"]["teacher"] > 0
    assert "| teacher |" in (bench_dir / "latency_pick.md").read_text()
    tuned = [n for n in ("latency pick", "paper pick") if n in res["speedup"]]
    assert (
        res["fine_tuned_here"] == tuned
        and "This invocation fine-tuned the latency pick" in (bench_dir / "latency_pick.md").read_text()
    )
    # a rerun reuses the kept picks, and says so
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    assert json.loads((bench_dir / "latency_pick.json").read_text())["fine_tuned_here"] == []
    assert "This invocation fine-tuned nothing; the latency pick" in (bench_dir / "latency_pick.md").read_text()
    # another architecture in the latency pick's place: what a declined pick would have given
    paper = res["archs"]["paper pick"]
    other = next(a for a in ("LLLL", "WWWW", "LWLW") if a not in (paper, summary["arch"]))
    subprocess.run([*cmd, "--candidate", other, "--name", "other"], check=True, capture_output=True, text=True,
                   cwd=tmp_path)  # fmt: skip
    res = json.loads((bench_dir / "other.json").read_text())
    assert res["archs"]["candidate"] == other and res["latency_pick"] == summary["arch"]
    assert set(res["speedup"]) == {"candidate", "paper pick"} and res["fine_tuned_here"] == ["candidate"]
    md = (bench_dir / "other.md").read_text()
    assert "Candidate against the paper pick" in md and f"`{other}` is not the run's pick" in md
