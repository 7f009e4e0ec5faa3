"""`jetvit search` / `jetvit distill` through the real CLI on a tiny teacher: outputs, resume after kills, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import STEP1, TESTS
from PIL import Image

import jetvit
from jetvit.cli import main


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> Path:
    return tiny_teacher_dir  # the shared tiny teacher, saved once a session (read only)


def cli(*args: str, env: dict | None = None, wait: bool = True):
    """Run `python -m jetvit ...` in a fresh process (as a user would)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **(env or {})}
    cmd = [sys.executable, "-m", "jetvit", *args]
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def search_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["search", "--config", "tiny", "--set", f"teacher={teacher}", "--set", STEP1, "--set",
            "run.checkpoint_every=3", *[a for e in extra for a in ("--set", e)], "--out", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    t0 = time.perf_counter()
    proc = cli(*search_args(teacher, out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "wall_seconds").write_text(f"{time.perf_counter() - t0:.1f}")
    return out


def test_search_writes_every_output(full_run):
    out = full_run
    assert float((out / "wall_seconds").read_text()) < 60
    files = "report.md config.yaml summary.json trajectory.json metrics.jsonl state.json architecture.png"
    files += " beam_scores.png loss.png model/config.json model/model.safetensors"
    for name in files.split():
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert any((out / "tb").glob("events.out.tfevents.*"))
    # the paper's criterion (the default): no trade round (`step2.trade` acts under the latency criterion only)
    assert "trade" not in json.loads((out / "trajectory.json").read_text())
    assert not (out / "search" / "trade.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    model = jetvit.load(out / "model")
    assert model.arch == summary["arch"] and len(model.arch) == 4 and set(model.arch) <= set("LWF")
    assert summary["arch"].count("F") <= 1  # tiny.yaml: step2.max_full = 1
    assert all(k != "F" for k in summary["step1_arch"])
    # Step 2 only changes Step 1 blocks to F.
    assert all(a == b or b == "F" for a, b in zip(summary["step1_arch"], summary["arch"]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 2 + 36, 32)  # CLS + 1 register + 6x6 patches
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["step1"]["start"] == "LLLL" and traj["step2"]["start"] == summary["step1_arch"]
    assert traj["step1"]["best"]["arch"] == summary["step1_arch"]
    for step in ("step1", "step2"):
        scored = [c["arch"] for r in traj[step]["rounds"] for c in r["candidates"]]
        assert len(scored) == len(set(scored)) == len(traj[step]["scores"])
    report = (out / "report.md").read_text()
    assert summary["arch"] in report and "Step 1 rounds" in report and "beam_scores.png" in report
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if "loss" in r]
    assert steps == sorted(steps) and {r["phase"] for r in records if "loss" in r} == {"step1", "step2", "finetune"}
    resolved = (out / "config.yaml").read_text()
    assert "steps: 24" in resolved and "checkpoint_every: 3" in resolved


def test_killed_runs_resume_to_the_same_result(full_run, teacher, tmp_path):
    """SIGKILL mid-training, then a kill in the middle of the Step 1 beam search; the third start finishes."""
    out = tmp_path / "killed"
    log = tmp_path / "scored.txt"
    args = search_args(teacher, out, "score.scorer=test_search_plugin_scorer:factory")
    env = {"JETVIT_TEST_SCORE_LOG": str(log)}

    proc = cli(*args, env=env, wait=False)
    ckpt = out / "ckpt" / "step1.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    assert not (out / "search" / "step1.json").exists()

    second = cli(*args, env={**env, "JETVIT_TEST_DIE_AFTER": "4"})
    assert second.returncode == 137, second.stdout + second.stderr
    assert "resuming step1 at stage 1, step" in second.stdout
    resumed_at = int(second.stdout.split("resuming step1 at stage 1, step ")[1].split()[0])
    assert 0 < resumed_at < 24
    partial = json.loads((out / "search" / "step1.json").read_text())
    assert partial["stop_reason"] is None and len(partial["scores"]) == 3

    third = cli(*args, env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    scored = log.read_text().split()
    assert len(scored) == len(set(scored)), "an architecture was scored twice across the restarts"

    ref = json.loads((full_run / "summary.json").read_text())
    got = json.loads((out / "summary.json").read_text())
    assert (got["step1_arch"], got["arch"]) == (ref["step1_arch"], ref["arch"])
    ref_traj = json.loads((full_run / "trajectory.json").read_text())
    got_traj = json.loads((out / "trajectory.json").read_text())
    for step in ("step1", "step2"):
        assert got_traj[step]["scores"].keys() == ref_traj[step]["scores"].keys()
        np.testing.assert_allclose(
            [got_traj[step]["scores"][a] for a in ref_traj[step]["scores"]],
            list(ref_traj[step]["scores"].values()),
            rtol=1e-5,
        )
    a, b = jetvit.load(full_run / "model").state_dict(), jetvit.load(out / "model").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # Metrics were not logged twice for the steps run again after the kill.
    steps = [json.loads(line)["global_step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [s for s, line in zip(steps, (out / "metrics.jsonl").read_text().splitlines()) if '"loss"' in line]
    assert len(losses) == len(set(losses))


def test_a_finished_run_started_again_changes_nothing(full_run, teacher):
    before = (full_run / "summary.json").read_text()
    proc = cli(*search_args(teacher, full_run))
    assert proc.returncode == 0, proc.stderr
    after = json.loads((full_run / "summary.json").read_text())
    assert after["arch"] == json.loads(before)["arch"]


def test_another_config_in_the_same_run_dir_is_refused(full_run, teacher, capsys):
    rc = main(search_args(teacher, full_run, "step1.beam.width=3"))
    assert rc == 2
    assert "step1.beam.width" in capsys.readouterr().err


def test_config_and_data_errors_name_the_problem(teacher, tmp_path, capsys):
    rc = main(["search", "--config", "tiny", "--set", "step1.beam.widht=2", "--out", str(tmp_path / "a")])
    assert rc == 2 and "unknown config key 'step1.beam.widht'" in capsys.readouterr().err
    rc = main(["search", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "a")])
    assert rc == 2 and "none.yaml" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder"
    rc = main(search_args(teacher, tmp_path / "b", f"data.source={missing}"))
    assert rc == 2 and str(missing) in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(search_args(teacher, tmp_path / "c", f"data.source={tmp_path / 'empty'}"))
    assert rc == 2 and "holds no images" in capsys.readouterr().err
    rc = main(search_args(teacher, tmp_path / "d", "finetune.stages.0.resolution=50"))
    assert rc == 2 and "finetune.stages.0.resolution" in capsys.readouterr().err
    rc = main(["distill", "--config", "tiny", "--set", f"teacher={teacher}", "--out", str(tmp_path / "e")])
    assert rc == 2 and "--arch" in capsys.readouterr().err
    rc = main(search_args(tmp_path / "no-teacher", tmp_path / "f"))
    assert rc == 2 and "no-teacher" in capsys.readouterr().err


def test_distill_on_a_folder_with_corrupt_images(teacher, tmp_path):
    data = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(6):
        (data / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(data / f"d{i % 2}" / f"{i}.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (data / "d1" / "empty.webp").write_bytes(b"")
    out = tmp_path / "distill"
    proc = cli("distill", "--config", "tiny", "--arch", "LWLF", "--set", f"teacher={teacher}",
               "--set", f"data.source={data}", "--set", "data.holdout=1", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == "LWLF" and jetvit.load(out / "model").arch == "LWLF"
    # Both broken files are skipped (and counted) once each, in training or among the held-out images.
    assert summary["skipped_training_images"] + len(summary["skipped_images"]) >= 2
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert any(e.get("skipped_images") for e in events)
    assert "skipping unreadable image" in proc.stdout + proc.stderr
    assert (
        f"Unreadable images skipped during training: {summary['skipped_training_images']}"
        in (out / "report.md").read_text()
    )
    assert np.isfinite([summary["start_score"], summary["final_score"]]).all()


def test_distill_with_activation_checkpointing_trains_the_same_weights(teacher, tmp_path):
    """`run.activation_checkpointing` recomputes the student's blocks in the backward pass: the same run gives the
    same weights, and a run directory made without it resumes with it (it changes how, not what)."""
    stages = "finetune.stages=[{resolution: 32, steps: 3, batch_size: 4, micro_batch_size: 2}]"
    outs = {}
    for on in (False, True):
        outs[on] = tmp_path / f"ckpt-{on}"
        proc = cli("distill", "--config", "tiny", "--arch", "LWLF", "--set", f"teacher={teacher}", "--set", stages,
                   "--set", f"run.activation_checkpointing={str(on).lower()}", "--out", str(outs[on]))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "activation_checkpointing: true" in (outs[True] / "config.yaml").read_text()
    a, b = jetvit.load(outs[False] / "model").state_dict(), jetvit.load(outs[True] / "model").state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    rc = main(["distill", "--config", "tiny", "--arch", "LWLF", "--set", f"teacher={teacher}", "--set", stages,
               "--set", "run.activation_checkpointing=true", "--out", str(outs[False])])  # fmt: skip
    assert rc == 0


def _losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def test_distill_with_compiled_blocks_trains_as_eager(teacher, tmp_path):
    """`run.compile: blocks` with activation checkpointing (with `aot_eager`: the same Dynamo and AOT-autograd graphs,
    forward and backward, without Inductor's code generation), over two resolutions and gradient accumulation: the
    loss curve and the weights of the eager run, within float32 reordering (AOT autograd's decompositions sum in
    another order). An eager run directory resumes compiled (it changes how, not what)."""
    stages = ("finetune.stages=[{resolution: 32, steps: 2, batch_size: 4},"
              " {resolution: 48, steps: 2, batch_size: 4, micro_batch_size: 2}]")  # fmt: skip
    common = ["distill", "--config", "tiny", "--arch", "LWLF", "--set", f"teacher={teacher}", "--set", stages,
              "--set", "run.log_every=1", "--set", "run.activation_checkpointing=true"]  # fmt: skip
    outs = {}
    for mode in ("none", "blocks"):
        outs[mode] = tmp_path / mode
        proc = cli(*common, "--set", f"run.compile={mode}", "--out", str(outs[mode]),
                   env={"JETVIT_COMPILE_BACKEND": "aot_eager"})  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    eager, compiled = _losses(outs["none"]), _losses(outs["blocks"])
    assert len(eager) == 4 and np.isfinite(eager).all()
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)  # measured: 1e-7
    a, b = jetvit.load(outs["none"] / "model").state_dict(), jetvit.load(outs["blocks"] / "model").state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)  # measured: at most 1.2e-7 apart
    rc = main([*common, "--set", "run.compile=blocks", "--out", str(outs["none"])])
    assert rc == 0


@pytest.mark.slow
def test_latency_criterion_measures_the_front_and_picks_on_it(teacher, tmp_path):
    """`objective.criterion: latency` with a measured front: the latency table and the front are written, every
    measured point is on the front or a pick, the pick is the fastest measured point within the tolerance (else the
    best), the report shows the front, and a second start measures nothing again. The front scores by its own
    options (`front.score_options`: here the plugin's cosine where the search's is the MSE), the teacher too."""
    out = tmp_path / "latency"
    extra = ["objective.criterion=latency", "objective.tolerance=0.01", "objective.reference=front", "front.steps=2",
             "front.max_points=3", "latency.repeats=2", "budget.resolution=64",
             "score.scorer=test_search_plugin_scorer:factory", "front.score_options.metric=cosine"]  # fmt: skip
    proc = cli(*search_args(teacher, out, *extra))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    table = json.loads((out / "latency.json").read_text())
    assert table["setting"]["source"] == "measured" and table["setting"]["resolution"] == [64, 64]
    assert set(table["blocks"]) == set("FWL")
    front = json.loads((out / "front.json").read_text())
    traj = json.loads((out / "trajectory.json").read_text())
    # the latency criterion trades each F of Step 2's best for the efficient kind Step 1 did not choose there
    # (`step2.trade`, on by default), and the trades go on the front with Step 2's candidates
    step1, best2, trades = summary["step1_arch"], traj["step2"]["best"]["arch"], traj["trade"]
    other = {"L": "W", "W": "L"}
    expect = {best2[:i] + other[step1[i]] + best2[i + 1 :] for i, k in enumerate(best2) if k == "F"}
    assert trades["start"] == best2 and {c["arch"] for c in trades["rounds"][1]["candidates"]} == expect
    assert {p["arch"] for p in front["points"]} == set(traj["step2"]["scores"]) | set(trades["scores"])
    measured = front["measured"]
    picks = {summary["picks"]["paper"]["arch"], summary["picks"]["latency"]["arch"]}
    assert picks <= set(measured) and len(measured) == min(3, len(set(front["pareto"]) | picks))
    assert set(measured) <= set(front["pareto"]) | picks
    assert summary["teacher_score"] == 0.0 and summary["scorer"] == "plugin_neg_feature_mse"  # the search's
    assert front["scorer"] == summary["front_scorer"]["scorer"] == "plugin_feature_cosine"
    assert front["teacher_score"] == summary["front_scorer"]["teacher_score"] == pytest.approx(1.0, abs=1e-6)
    assert all(0 < m["score"] <= 1 + 1e-6 for m in measured.values())  # cosines, not negated MSEs
    # held to the best measured point where it is below the teacher (objective.reference: front)
    reference = min(front["teacher_score"], max(m["score"] for m in measured.values()))
    within = {a: m for a, m in measured.items() if m["score"] >= reference - 0.01}
    assert summary["arch"] == min(within, key=lambda a: (within[a]["ms"], -within[a]["score"]))  # the best is within
    for m in measured.values():
        assert m["steps"] == 2 and m["ms"] > 0 and m["teacher_ms"] > 0
        assert m["speedup"] == pytest.approx(m["teacher_ms"] / m["ms"])
    assert summary["predicted_ms"] == pytest.approx(table["fixed"] + sum(table["blocks"][k] for k in summary["arch"]))
    rows = {r["arch"]: r for r in summary["front"]}
    assert set(measured) <= set(rows)
    report = (out / "report.md").read_text()
    assert "## Accuracy against latency" in report and "front.png" in report and "Criterion: **latency**" in report
    assert "scored by plugin_feature_cosine (with `front.score_options` {'metric': 'cosine'})" in report
    assert (out / "front.png").stat().st_size > 0
    assert not list((out / "ckpt").glob("front-*"))  # the points' weights go once the fine-tuning has finished
    # the pick (always a measured point) was fine-tuned on from its front distillation: 6 steps less the front's 2
    state = json.loads((out / "state.json").read_text())["phases"]
    assert state["front_reuse"] == {"arch": summary["arch"], "steps": 2} and summary["finetune"]["steps"] == 4
    assert "The pick's fine-tuning continued from its point (2 of its steps were done here)." in report
    # the compute against a paper-style search: the front's steps in, the steps the fine-tuning continued out
    supernets = state["step1"]["result"]["steps"] + state["step2"]["result"]["steps"]
    c = summary["compute"]
    assert (c["steps"], c["paper_steps"]) == (supernets + 2 * len(measured) + 4, supernets + 6)
    assert c["front_seconds"] == state["front"]["seconds"] and c["latency_seconds"] == state["latency"]["seconds"] > 0
    # a block-wise Step 2 with trades trained three candidates a block: a paper-style one's is estimated at 2/3
    assert c["trade_seconds"] == pytest.approx(state["step2"]["seconds"] / 3 + state["trade"]["seconds"])
    assert "Compute against a paper-style search on the same supernets" in report
    assert f"| front ({len(measured)} points distilled and timed) | {2 * len(measured)} |" in report
    before = (out / "front.json").read_text()
    again = cli(*search_args(teacher, out, *extra))
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "front.json").read_text() == before  # resumed from what was measured
    assert json.loads((out / "summary.json").read_text())["arch"] == summary["arch"]


def test_a_traded_pick_is_fine_tuned_and_reported(teacher, tmp_path, monkeypatch):
    """A pick from the latency criterion's trade round (not one of Step 2's beam candidates) goes through the rest of
    the run: extracted from Step 2's supernet, fine-tuned, its supernet score in the summary, the trades in the report
    and `trajectory.json`. (Which point a real front picks is the measurement's; here the pick is forced.)"""
    from jetvit import front as front_lib

    def pick_a_trade(front, chosen, **kw):
        trades = [p["arch"] for p in front["points"] if p["arch"] not in traj2_archs()]
        return trades[0], "a trade, for this test"

    out = tmp_path / "traded"
    traj2_archs = lambda: set(json.loads((out / "search" / "step2.json").read_text())["scores"])  # noqa: E731
    monkeypatch.setattr(front_lib, "final_pick", pick_a_trade)
    extra = ["objective.criterion=latency", "latency.repeats=1", "budget.resolution=64", "step2.stop_at_teacher=false"]
    assert main(search_args(teacher, out, *extra)) == 0
    summary = json.loads((out / "summary.json").read_text())
    traj = json.loads((out / "trajectory.json").read_text())
    arch = summary["arch"]
    assert arch in traj["trade"]["scores"] and arch not in traj["step2"]["scores"]
    assert summary["step2_score"] == traj["trade"]["scores"][arch]
    assert summary["pick_reason"] == "a trade, for this test"
    assert jetvit.load(out / "model").arch == arch
    report = (out / "report.md").read_text()
    assert "| 2, traded: an F for the other efficient kind |" in report
    assert f"; the pick `{arch}` has it at blocks {[i for i, k in enumerate(arch) if k == 'F'] or 'none'}." in report
