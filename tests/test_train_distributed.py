"""Two processes under torchrun (gloo, CPU): the same paths, the same global batches, identical weights; the student
sharded (`run.strategy: fsdp`) trains what it trains replicated, and its sharded checkpoints resume on another number
of processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import STEP1, TESTS

import jetvit
from jetvit.train.checkpoint import load_checkpoint, shards_dir

# fp32 on the CPU. One process and two sum a batch's gradients in another order (the two processes' halves are
# averaged), which moves the trained weights of these runs by up to about 2e-7 (measured: 1.6e-7 after 6 steps of
# `jetvit distill`, 6e-7 after a whole tiny search); FSDP and DDP on two processes gave bit-identical weights. The
# bound leaves a margin for other builds: max |a - b| <= ATOL x max(1, max |a|), per tensor.
ATOL = 1e-5


def _cmd(*args: str, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "jetvit", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "jetvit", *args]  # fmt: skip


def _env(env: dict | None = None) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **(env or {})}


def torchrun(*args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """`jetvit ARGS` on `nproc` processes (one: without torchrun), to its end."""
    return subprocess.run(_cmd(*args, nproc=nproc), env=_env(env), capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _assert_same_weights(a: Path, b: Path) -> None:
    """The models saved in run directories `a` and `b` agree within `ATOL`."""
    sa, sb = jetvit.load(a / "model").state_dict(), jetvit.load(b / "model").state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=ATOL * max(1.0, sa[k].abs().max().item()), msg=k)


def _digests_agree(phase_result: dict) -> None:
    digests = phase_result["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], digests


@pytest.mark.distributed
def test_two_process_distill_gives_identical_weights(tiny_teacher_dir, tmp_path):
    """The cheapest of these: a fixed architecture, a few steps with gradient accumulation."""
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
@pytest.mark.parametrize(
    ("sampling", "inputs"), [("uniform", "student"), ("blockwise", "student"), ("blockwise", "teacher")]
)
def test_two_process_search_samples_the_same_paths_and_shares_the_scoring(tiny_teacher_dir, tmp_path, sampling, inputs):
    """Single paths (every process draws the same one) and block-wise supernets under DDP: on the student's inputs
    (the default; the path that feeds each block is drawn, the same on every process) and on the teacher's."""
    teacher = tiny_teacher_dir
    out = tmp_path / "search"
    log = tmp_path / "scored.txt"
    proc = torchrun("search", "--config", "tiny", "--set", f"teacher={teacher}", "--set", STEP1,
                    "--set", "score.scorer=test_search_plugin_scorer:factory", "--out", str(out),
                    "--set", f"supernet.sampling={sampling}", "--set", f"supernet.blockwise_input={inputs}",
                    env={"JETVIT_TEST_SCORE_LOG": str(log)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    for phase in ("step1", "step2", "finetune"):
        _digests_agree(summary["phases"][phase]["result"])
    # Every process asserted each step that all processes drew the same path; rank 0 logged them.
    records = [json.loads(line) for line in Path(out / "metrics.jsonl").read_text().splitlines()]
    paths = [r["path"] for r in records if r.get("phase") == "step1" and "path" in r]
    if sampling == "uniform" or inputs == "student":
        assert len(paths) > 5 and len(set(paths)) > 1
    else:
        assert paths == []  # block-wise on the teacher's inputs: no path, every candidate trains
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


def _descendants(pid: int) -> list[int]:
    """The processes below process `pid` (Linux: read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, ...
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        below = todo.pop()
        kids = [p for p, parent in parents.items() if parent == below]
        found += kids
        todo += kids
    return found


def _distill(teacher: Path, out: Path, strategy: str, *extra: str, steps: int = 6) -> list[str]:
    stages = f"finetune.stages=[{{resolution: 32, steps: {steps}, batch_size: 4, micro_batch_size: 1}}]"
    return ["distill", "--config", "tiny", "--arch", "LWWF", "--set", f"teacher={teacher}", "--set", stages,
            "--set", f"run.strategy={strategy}", *extra, "--out", str(out)]  # fmt: skip


@pytest.mark.distributed
def test_fsdp_distill_trains_the_weights_of_ddp_and_of_one_process(tiny_teacher_dir, tmp_path):
    """6 steps of 4 micro-batches (2 per process), a sharded checkpoint at step 4 (the tiny config's
    checkpoint_every), the learning curve scored every 3 steps on the sharded model."""
    runs = {"fsdp": (2, "fsdp"), "ddp": (2, "ddp"), "one": (1, "fsdp")}
    for name, (nproc, strategy) in runs.items():
        _ok(torchrun(*_distill(tiny_teacher_dir, tmp_path / name, strategy, "--set", "run.eval_every=3"), nproc=nproc))
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in runs}
    assert [summaries[n]["world_size"] for n in runs] == [2, 2, 1]
    for name in ("fsdp", "ddp"):
        _digests_agree(summaries[name]["finetune"])
    _assert_same_weights(tmp_path / "one", tmp_path / "fsdp")
    _assert_same_weights(tmp_path / "ddp", tmp_path / "fsdp")
    curves = {n: summaries[n]["finetune"]["curve"] for n in runs}  # [[step, score], ...]
    assert [step for step, _ in curves["fsdp"]] == [3, 6]
    for name in ("ddp", "one"):
        assert [s for _, s in curves[name]] == pytest.approx([s for _, s in curves["fsdp"]], rel=1e-4)
    # The finished phase's checkpoint is full (what `jetvit.save` and the later phases read); no shards remain.
    ckpt = tmp_path / "fsdp" / "ckpt" / "finetune.pt"
    assert load_checkpoint(ckpt)["done"] and not shards_dir(ckpt).exists()


@pytest.mark.distributed
def test_fsdp_search_finds_the_architecture_of_ddp(tiny_teacher_dir, tmp_path):
    """The tiny search, sharded (with activation checkpointing, which changes nothing computed) and replicated."""
    args = ["search", "--config", "tiny", "--set", f"teacher={tiny_teacher_dir}"]
    _ok(torchrun(*args, "--set", "run.strategy=ddp", "--out", str(tmp_path / "ddp")))
    _ok(torchrun(*args, "--set", "run.strategy=fsdp", "--set", "run.activation_checkpointing=true",
                 "--out", str(tmp_path / "fsdp")))  # fmt: skip
    ddp, fsdp = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("ddp", "fsdp"))
    assert (fsdp["step1_arch"], fsdp["arch"]) == (ddp["step1_arch"], ddp["arch"])
    for phase in ("step1", "step2", "finetune"):
        _digests_agree(fsdp["phases"][phase]["result"])
    _assert_same_weights(tmp_path / "ddp", tmp_path / "fsdp")


@pytest.mark.distributed
def test_killed_fsdp_run_resumes_on_another_number_of_processes(tiny_teacher_dir, tmp_path):
    """SIGKILL to a sharded run on 2 processes once its first checkpoint is written; its run directory then finishes
    on 1 process, on 2 sharded and on 2 replicated, each with the weights of a run never stopped."""
    every = ("--set", "run.checkpoint_every=2")
    killed = tmp_path / "killed"
    cmd = _cmd(*_distill(tiny_teacher_dir, killed, "fsdp", *every, steps=30), nproc=2)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "ckpt" / "finetune.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    for pid in [*_descendants(proc.pid), proc.pid]:  # torchrun starts each process in a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    time.sleep(0.5)  # nothing writes any more: the checkpoint stays where the kill left it
    ck = load_checkpoint(ckpt)
    assert not ck["done"] and 2 <= ck["step"] < 30 and "shards" in ck

    _ok(torchrun(*_distill(tiny_teacher_dir, tmp_path / "reference", "ddp", *every, steps=30), nproc=1))
    for name, nproc, strategy in (("one", 1, "ddp"), ("fsdp", 2, "fsdp"), ("ddp", 2, "ddp")):
        shutil.copytree(killed, tmp_path / name)
        proc = torchrun(*_distill(tiny_teacher_dir, tmp_path / name, strategy, *every, steps=30), nproc=nproc)
        _ok(proc)
        assert f"resuming finetune at stage 1, step {ck['step']}" in proc.stdout
        _assert_same_weights(tmp_path / "reference", tmp_path / name)
