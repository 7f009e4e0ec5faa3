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


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
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
def test_two_process_search_samples_the_same_paths(tiny_teacher_dir, tmp_path):
    teacher = tiny_teacher_dir
    out = tmp_path / "search"
    proc = torchrun("search", "--config", "tiny", "--set", f"teacher={teacher}", "--set", STEP1, "--out", str(out))
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
