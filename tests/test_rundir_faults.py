"""The promises of a run directory under faults, through the real CLI on the tiny teacher: two runs on one `--out`,
a disk that fills up (a real small file system where this system lets a user mount one, and fakes), unreadable,
truncated and oversized images met during training, and saves and exports killed mid-write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jetvit
from jetvit.cli import main, user_error
from jetvit.io import MAX_IMAGE_PIXELS, atomic_torch_save, open_image
from jetvit.rundir import LOCK_NAME, hold_run_dir
from jetvit.train.checkpoint import load_checkpoint
from jetvit.train.data import split_holdout

# The jetvit under test: subprocesses import it from here, whatever is installed.
ROOT = Path(jetvit.__file__).resolve().parents[1]
ARCH = "LWLF"  # the tiny teacher has 4 blocks


def cli_env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(map(str, (*paths, ROOT)))}


def distill_args(teacher: Path, out: Path, *sets: str) -> list[str]:
    pairs = [f"teacher={teacher}", "finetune.stages=[{resolution: 32, steps: 2, batch_size: 2}]", *sets]
    options = [a for kv in pairs for a in ("--set", kv)]
    return ["distill", "--config", "tiny", "--arch", ARCH, *options, "--out", str(out)]


def python(*args: str, extra: tuple[Path, ...] = (), **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=cli_env(*extra), text=True, **popen)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{what} never happened (rc {proc.returncode}): {out}{err}")
        time.sleep(0.02)


def one_line_error(capsys, rc: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and "Traceback" not in captured.err, captured.err
    assert len(lines) == 1 and ": error: " in lines[0], captured.err
    return lines[0]


def temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp"))


# --- two runs on one --out ------------------------------------------------------------------------------------------


def test_the_hold_refuses_a_second_holder_and_leaves_nothing_of_a_failed_start(tmp_path):
    out = tmp_path / "a" / "run"
    with hold_run_dir(out, main=True):
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(ValueError, match=f"--out '{out}' is in use by another run \\(pid {os.getpid()} on "):
            with hold_run_dir(out, main=True):
                pass
        with hold_run_dir(out, main=False):  # other ranks of the holder's run do not lock
            pass
    assert not (tmp_path / "a").exists()  # created here, nothing written: removed with its parent
    with pytest.raises(RuntimeError):
        with hold_run_dir(out, main=True):
            (out / "config.yaml").write_text("x")
            raise RuntimeError("the run failed after writing")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # the lock file goes, what the run wrote stays
    with pytest.raises(ValueError, match="is a file"):
        with hold_run_dir(out / "config.yaml", main=True):
            pass


def test_a_second_run_on_the_same_out_is_refused_and_the_first_finishes(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    six = "finetune.stages=[{resolution: 32, steps: 6, batch_size: 2}]"
    args = distill_args(tiny_teacher_dir, out, six, "run.checkpoint_every=1")
    first = python("-m", "jetvit", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for((out / "ckpt" / "finetune.pt").exists, first, "the first run's first checkpoint")
    first.send_signal(signal.SIGSTOP)  # held mid-training while the second run starts
    try:
        line = one_line_error(capsys, main(args))
    finally:
        first.send_signal(signal.SIGCONT)
    assert f"--out '{out}' is in use by another run (pid {first.pid} on " in line
    log, _ = first.communicate(timeout=120)
    assert first.returncode == 0, log
    assert "resuming" not in log and not (out / LOCK_NAME).exists() and not temporaries(out)
    # Unharmed: the weights of a run nothing disturbed.
    alone = tmp_path / "alone"
    assert main(distill_args(tiny_teacher_dir, alone, six, "run.checkpoint_every=1")) == 0
    digests = [json.loads((d / "summary.json").read_text())["finetune"]["rank_weight_digests"] for d in (out, alone)]
    assert digests[0] == digests[1]
    capsys.readouterr()


def test_a_killed_run_leaves_no_stale_hold(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = distill_args(tiny_teacher_dir, out, "finetune.stages=[{resolution: 32, steps: 20, batch_size: 2}]",
                        "run.checkpoint_every=1")  # fmt: skip
    first = python("-m", "jetvit", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for((out / "ckpt" / "finetune.pt").exists, first, "the first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert (out / LOCK_NAME).exists()  # the file stays, the lock went with the process
    assert main(args) == 0, capsys.readouterr().err
    assert "resuming finetune" in capsys.readouterr().out
    assert not (out / LOCK_NAME).exists() and jetvit.load(out / "model").arch == ARCH


# --- the disk fills up ---------------------------------------------------------------------------------------------


def _can_mount_tmpfs(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp}"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A folder where a tmpfs can be mounted in a user and mount namespace (`unshare -Urm`): a small file system
    that really fills up. Skipped where the system does not let a user do that."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -Urm)")
    return disk


# Runs in the namespace: the tmpfs and everything on it live only as long as this script. It runs the scenario and
# copies what the tests look at out of the tmpfs.
FULL_DISK = r'''
import json, os, shutil, signal, subprocess, sys, time
disk, report, size = sys.argv[1], sys.argv[2], sys.argv[3]
steps = json.loads(sys.argv[4])
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", disk], check=True)
ballast = os.path.join(os.path.dirname(report), "ballast")  # outside the tmpfs: the host sees it only when told

def fill():
    """Another program fills the disk: write until no byte is left."""
    with open(os.path.join(disk, "ballast"), "ab", buffering=0) as f:
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass

results = []
for step in steps:
    if step["do"] == "fill":
        fill()
    elif step["do"] == "free":
        os.unlink(os.path.join(disk, "ballast"))
    elif step["do"] == "copy":
        shutil.copytree(os.path.join(disk, step["src"]), step["dst"], symlinks=True)
    elif step["do"] == "run":
        p = subprocess.Popen([sys.executable, *step["args"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if step.get("fill_after"):  # the disk fills up while the run trains
            while not os.path.exists(os.path.join(disk, step["fill_after"])) and p.poll() is None:
                time.sleep(0.01)
            p.send_signal(signal.SIGSTOP)
            fill()
            p.send_signal(signal.SIGCONT)
        out, err = p.communicate(timeout=300)
        results.append({"rc": p.returncode, "out": out, "err": err, "ls": sorted(
            os.path.relpath(os.path.join(r, f), disk) for r, _, fs in os.walk(disk) for f in fs)})
with open(report, "w") as f:
    json.dump(results, f)
'''


def on_small_disk(disk: Path, size: str, steps: list[dict], extra: tuple[Path, ...] = ()) -> list[dict]:
    script, report = disk.parent / "full_disk.py", disk.parent / "report.json"
    script.write_text(FULL_DISK)
    proc = subprocess.run(
        ["unshare", "-Urm", sys.executable, str(script), str(disk), str(report), size, json.dumps(steps)],
        env=cli_env(*extra),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(report.read_text())


@pytest.fixture
def no_tensorboard(tmp_path) -> Path:
    """A sitecustomize folder that makes tensorboard unimportable: the run writes its metrics to one file only."""
    folder = tmp_path / "no-tb"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['tensorboard'] = None\n")
    return folder


def full_line(result: dict, command: str) -> str:
    assert result["rc"] == 2 and "Traceback" not in result["err"], result["err"]
    last = result["err"].strip().splitlines()[-1]  # after the progress bar the run was in
    line = last[last.find(f"jetvit {command}: error: ") :]
    assert line.startswith(f"jetvit {command}: error: no space left on the device while writing "), last
    assert "free there now" in line
    return line


def test_a_full_disk_stops_training_in_one_line_and_the_same_command_resumes(
    tiny_teacher_dir, small_disk, no_tensorboard, tmp_path
):
    run = small_disk / "run"
    # Metrics only at the end, checkpoints at every step: the write the full disk refuses is a checkpoint's.
    args = ["-m", "jetvit", *distill_args(tiny_teacher_dir, run, "finetune.stages=[{resolution: 32, steps: 10,"
            " batch_size: 2}]", "run.checkpoint_every=1", "run.log_every=1000")]  # fmt: skip
    failed, resumed = on_small_disk(
        small_disk,
        "8m",
        [
            {"do": "run", "args": args, "fill_after": "run/ckpt/finetune.pt"},
            {"do": "copy", "src": "run", "dst": str(tmp_path / "after_failure")},
            {"do": "free"},  # space is back
            {"do": "run", "args": args},
            {"do": "copy", "src": "run", "dst": str(tmp_path / "after_resume")},
        ],
        extra=(no_tensorboard,),
    )
    line = full_line(failed, "distill")
    assert f"'{run / 'ckpt' / 'finetune.pt'}'" in line
    assert "run the same command again" in line
    kept = load_checkpoint(tmp_path / "after_failure" / "ckpt" / "finetune.pt")  # the previous checkpoint, whole
    assert not kept["done"] and 1 <= kept["step"] < 10
    assert not temporaries(tmp_path / "after_failure")
    assert resumed["rc"] == 0, resumed["err"]
    assert f"resuming finetune at stage 1, step {kept['step']}" in resumed["out"] + resumed["err"]
    summary = json.loads((tmp_path / "after_resume" / "summary.json").read_text())
    assert summary["finetune"]["steps"] == 10 and jetvit.load(tmp_path / "after_resume" / "model").arch == ARCH
    assert not temporaries(tmp_path / "after_resume")


def test_a_full_disk_while_saving_a_model_is_one_line(tiny_teacher_dir, small_disk):
    convert = ["-m", "jetvit", "convert", "--teacher", str(tiny_teacher_dir), "--arch", ARCH, "--out",
               str(small_disk / "model")]  # fmt: skip
    (result,) = on_small_disk(small_disk, "256k", [{"do": "fill"}, {"do": "run", "args": convert}])
    line = full_line(result, "convert")
    assert f"'{small_disk / 'model' / 'model.safetensors'}'" in line
    assert result["ls"] == ["ballast"]  # neither a weights file nor a temporary one


@pytest.mark.slow  # an ONNX export: about 10 s
def test_a_full_disk_while_exporting_is_one_line(tiny_teacher_dir, small_disk):
    pytest.importorskip("onnxscript")
    export = ["-m", "jetvit", "export", "--model", str(tiny_teacher_dir), "--res", "32", "--out",
              str(small_disk / "tiny.onnx"), "--no-check"]  # fmt: skip
    (result,) = on_small_disk(small_disk, "256k", [{"do": "fill"}, {"do": "run", "args": export}])
    line = full_line(result, "export")
    assert f"'{small_disk / 'tiny.onnx'}'" in line
    assert result["ls"] == ["ballast"]


def test_write_errors_name_the_file_and_keep_the_previous_one(tiny_teacher_dir, tmp_path, monkeypatch, capsys):
    """Where no small file system can be mounted: the writes themselves fail as on a full disk."""
    import safetensors.torch
    from safetensors import SafetensorError

    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"step": 1}, path)

    class Full:
        """A file that takes 100 bytes, then finds the disk full."""

        def __init__(self, name, mode):
            self.file, self.room = open(name, mode), 100

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    with monkeypatch.context() as m:
        m.setattr("jetvit.io.open", Full, raising=False)
        with pytest.raises(OSError) as e:
            atomic_torch_save({"w": torch.zeros(1000)}, path)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(path))  # torch's own error would say neither
    assert torch.load(path, weights_only=True) == {"step": 1} and not temporaries(tmp_path)

    def full_save_file(state, filename, metadata=None):  # what safetensors (Rust) reports
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_save_file)
    out = tmp_path / "model"
    line = one_line_error(capsys, main(["convert", "--teacher", str(tiny_teacher_dir), "--arch", ARCH, "--out",
                                        str(out)]))  # fmt: skip
    assert f"no space left on the device while writing '{out / 'model.safetensors'}'" in line
    assert "free there now" in line
    assert list(out.iterdir()) == []


# --- unreadable, truncated and oversized images --------------------------------------------------------------------


def write_bomb(path: Path, side: int = 10_000) -> None:
    """A 1-bit PNG of side x side pixels: a few kilobytes on disk, gigabytes as RGB floats."""
    Image.new("1", (side, side)).save(path)


def test_open_image_refuses_an_image_over_the_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    write_bomb(bomb)
    assert 10_000 * 10_000 > MAX_IMAGE_PIXELS and bomb.stat().st_size < 200_000
    with pytest.raises(ValueError) as e:
        open_image(bomb)
    message = user_error(e.value)  # a user-given image (an evaluation set's): one line, naming the file
    assert f"image '{bomb}' has 10000 x 10000 = 100000000 pixels, more than the {MAX_IMAGE_PIXELS}" in message
    from jetvit.tasks.datasets import read_image

    with pytest.raises(ValueError, match="more than the"):
        read_image(bomb)
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    with open_image(tmp_path / "ok.png") as im:
        assert im.size == (40, 30)


def test_bad_images_met_in_training_are_skipped_and_counted(tiny_teacher_dir, tmp_path):
    """A truncated PNG, a truncated JPEG (PIL opens both and fails only when it decodes the pixels), a file that is
    not an image, and a decompression bomb, among 8 images: the run ends, and the log, metrics and summary count
    each once."""
    rng = np.random.default_rng(0)
    names = [f"{i:02d}" for i in range(8)]
    _, held = split_holdout(len(names), 1)
    bad = [n for i, n in enumerate(names) if i not in held][:4]  # the held-out image is a good one
    data = tmp_path / "images"
    data.mkdir()
    kinds = dict(zip(bad, ("png", "jpg", "garbage", "bomb")))
    for n in names:
        pixels = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        kind = kinds.get(n)
        if kind in ("png", "jpg"):
            path = data / f"{n}.{kind}"
            pixels.save(path)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut mid-file
            with Image.open(path) as im:  # the header is intact: PIL opens it
                assert im.size == (64, 48)
        elif kind == "garbage":
            (data / f"{n}.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        elif kind == "bomb":
            write_bomb(data / f"{n}.png")
        else:
            pixels.save(data / f"{n}.png")
    out = tmp_path / "run"
    # 4 steps of 2 images: the 7 training images are all met in the first epoch.
    args = distill_args(tiny_teacher_dir, out, f"data.source={data}", "data.holdout=1",
                        "finetune.stages=[{resolution: 32, steps: 4, batch_size: 2}]")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "jetvit", *args], env=cli_env(), capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in log, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_training_images"] == 4 and summary["skipped_images"] == []
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["skipped_images"] for e in events] == [4]
    for n, kind in kinds.items():
        name = f"{n}.{'jpg' if kind == 'jpg' else 'png'}"
        assert log.count(f"skipping unreadable image {name}:") == 1, log
    assert "pixels, more than the" in log
    assert "Unreadable images skipped during training: 4" in (out / "report.md").read_text()


# --- a save or an export killed mid-write ----------------------------------------------------------------------------

# Runs `jetvit.save` or `jetvit export` with the library's write cut short: half the file written, then a pause in
# which the test kills the process.
STALLED_WRITE = r"""
import os, sys, time
what, target = sys.argv[1], sys.argv[2]

def stall(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    print("writing", flush=True)
    time.sleep(120)

if what == "save":
    import safetensors.torch, torch, jetvit
    real = safetensors.torch.save_file
    def save_file(state, filename, metadata=None):
        real(state, filename, metadata=metadata)
        stall(filename)
    safetensors.torch.save_file = save_file
    model = jetvit.load(sys.argv[3])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    jetvit.save(model, target)
else:
    import torch.onnx
    from jetvit.cli import main
    real = torch.onnx.ONNXProgram.save
    def save(self, destination, **kw):
        real(self, destination, **kw)
        stall(destination)
    torch.onnx.ONNXProgram.save = save
    main(["export", "--model", sys.argv[3], "--res", "32", "--out", target, "--no-check"])
"""


def kill_mid_write(tmp_path: Path, what: str, target: Path, model: Path) -> None:
    script = tmp_path / "stalled_write.py"
    script.write_text(STALLED_WRITE)
    proc = python(str(script), what, str(target), str(model), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    if line.strip() != "writing":
        proc.kill()
        pytest.fail(f"the write never started: {line}{proc.communicate()}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_a_save_killed_mid_write_keeps_the_previous_model(tiny_teacher_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    kill_mid_write(tmp_path, "save", out, tiny_teacher_dir)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix != ".tmp"} == before
    assert len(temporaries(out)) == 1  # the cut-short weights, under a temporary name
    fresh = tmp_path / "fresh"
    kill_mid_write(tmp_path, "save", fresh, tiny_teacher_dir)
    assert not (fresh / "model.safetensors").exists() and not (fresh / "config.json").exists()
    jetvit.save(jetvit.load(tiny_teacher_dir), out)  # the next save clears what the killed one left
    assert not temporaries(out)


@pytest.mark.slow  # two ONNX exports: about 15 s
def test_an_export_killed_mid_write_leaves_no_file(tiny_teacher_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    out = tmp_path / "tiny.onnx"
    kill_mid_write(tmp_path, "export", out, tiny_teacher_dir)
    assert not out.exists()
    assert len(temporaries(tmp_path)) == 1  # the cut-short graph, in a temporary folder
    assert main(["export", "--model", str(tiny_teacher_dir), "--res", "32", "--out", str(out), "--no-check"]) == 0
    assert out.stat().st_size > 0 and not temporaries(tmp_path)
    capsys.readouterr()
