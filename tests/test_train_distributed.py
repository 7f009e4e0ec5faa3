"""Two processes under torchrun (gloo, CPU): the same paths, the same global batches, identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_pipeline import STEP1, TESTS

import jetvit


def torchrun(*args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "jetvit", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _digests_agree(phase_result: dict) -> None:
    digests = phase_result["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], digests


def test_two_process_distill_gives_identical_weights(tiny_teacher_dir, tmp_path):
    """Cheap version for the default run: a fixed architecture, a few steps with gradient accumulation."""
    teacher = tiny_teacher_dir
    out = tmp_path / "distill"
    proc = torchrun("distill", "--config", "tiny", "--arch", "LWWF", "--set", f"teacher={teacher}",
                    "--set", "finetune.stages=[{resolution: 32, steps: 3, batch_size: 4, micro_batch_size: 1}]",
                    "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    _digests_agree(summary["finetune"])
    assert jetvit.load(out / "model").arch == "LWWF"


@pytest.mark.distributed
def test_two_process_search_samples_the_same_paths_and_shares_the_scoring(tiny_teacher_dir, tmp_path):
    teacher = tiny_teacher_dir
    out = tmp_path / "search"
    log = tmp_path / "scored.txt"
    proc = torchrun("search", "--config", "tiny", "--set", f"teacher={teacher}", "--set", STEP1,
                    "--set", "score.scorer=test_search_plugin_scorer:factory", "--out", str(out),
                    env={"JETVIT_TEST_SCORE_LOG": str(log)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    for phase in ("step1", "step2", "finetune"):
        _digests_agree(summary["phases"][phase]["result"])
    # Every process asserted each step that all processes drew the same path; rank 0 logged them.
    records = [json.loads(line) for line in Path(out / "metrics.jsonl").read_text().splitlines()]
    paths = [r["path"] for r in records if r.get("phase") == "step1" and "path" in r]
    assert len(paths) > 5 and len(set(paths)) > 1
    assert jetvit.load(out / "model").arch == summary["arch"]
    # The beam searches scored their candidates in shares: each once overall, both processes at work.
    traj = json.loads((out / "trajectory.json").read_text())
    scored = [line.rsplit("@", 1) for line in log.read_text().split()]  # "choices:arch", rank
    # A supernet's line names 2 candidates per block ("LW/LW/..."); the plain models' (teacher, final) one kind.
    searched = [(path, rank) for path, rank in scored if len(path.split(":")[0].split("/")[0]) > 1]
    assert (
        len({path for path, _ in searched}) == len(searched) == sum(len(traj[s]["scores"]) for s in ("step1", "step2"))
    )
    assert {rank for _, rank in searched} == {"0", "1"}
