"""A new user's first hour, through the real CLI: the README's tour on the built-in teacher with nothing extra
installed, then bad inputs (each one line on stderr, exit 2, no traceback, sources untouched), and runs that fail at
start-up or are killed mid-write (the repeated or corrected command succeeds and leaves no temporary file)."""

from __future__ import annotations

import hashlib
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
from jetvit.cli import main
from jetvit.demo.teacher import ASSET_DIR
from jetvit.train.data import split_holdout

# Optional packages a plain `pip install jetvit` does not bring; the tour runs with all of them made unimportable.
OPTIONAL = (
    "skimage", "tensorboard", "onnx", "onnxruntime", "onnxscript", "huggingface_hub", "transformers", "sklearn",
    "pycocotools",
)  # fmt: skip


def sets(*assignments: str) -> list[str]:
    return [a for kv in assignments for a in ("--set", kv)]


# The tiny config cut to a few seconds: two steps per training phase, one beam round per search step.
SHORT = {p: f"{p}.stages=[{{resolution: 32, steps: 2, batch_size: 2}}]" for p in ("step1", "step2", "finetune")}
QUICK = sets(*SHORT.values(), "step1.beam.max_rounds=1", "step2.beam.max_rounds=1")


def jetvit_cli(
    *args: str, cwd: Path, blocked: Path | None = None, **popen
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`python -m jetvit ...` in a fresh process, as a user runs it; `blocked`: a folder whose sitecustomize makes
    the optional packages unimportable (as where they were never installed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if blocked is not None:
        env["PYTHONPATH"] = str(blocked)
    cmd = [sys.executable, "-m", "jetvit", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=cwd, **popen)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tmp"))


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path) if path.is_dir() else p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


@pytest.fixture(scope="module")
def blocked(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("no-extras")
    (folder / "sitecustomize.py").write_text(f"import sys\nfor name in {OPTIONAL!r}:\n    sys.modules[name] = None\n")
    return folder


# --- the tour ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tour(blocked, tmp_path_factory) -> dict[str, subprocess.CompletedProcess | Path]:
    """The README's tour on the built-in teacher, each command in its own process (started together: they are
    independent), no optional package."""
    cwd = tmp_path_factory.mktemp("tour")
    commands = {
        "info": ["info", "builtin", "--res", "256"],
        "convert": ["convert", "--teacher", "builtin", "--arch", "LWLWLFLW", "--out", "hybrid"],
        "search": ["search", "--config", "tiny", "--out", "search", *QUICK],
        "distill": ["distill", "--config", "tiny", "--arch", "lwlwlflw", "--out", "distill", *sets(SHORT["finetune"])],
        "bench": ["bench", "--teacher", "builtin", "--arch", "lwlwlflw", "--res", "64", "--repeats", "1",
                  "--warmup", "0", "--no-memory", "--out", "bench"],
    }  # fmt: skip
    procs = {
        name: jetvit_cli(*argv, cwd=cwd, blocked=blocked, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        runs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return {**runs, "cwd": cwd}


@pytest.mark.parametrize("command", ["info", "convert", "search", "distill", "bench"])
def test_tour_runs_with_nothing_extra_installed(tour, command):
    proc = tour[command]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr


def test_tour_outputs(tour):
    cwd = tour["cwd"]
    assert "arch         FFFFFFFF" in tour["info"].stdout and "at 256x256" in tour["info"].stdout
    assert jetvit.load(cwd / "hybrid").arch == "LWLWLFLW"
    summary = json.loads((cwd / "search" / "summary.json").read_text())
    assert jetvit.load(cwd / "search" / "model").arch == summary["arch"]
    assert summary["data"].endswith("generated keyshapes scenes")
    assert json.loads((cwd / "distill" / "summary.json").read_text())["arch"] == "LWLWLFLW"
    assert (cwd / "bench" / "bench.json").is_file()
    # What the run directory and its report say is what happened: no TensorBoard here, and the reason.
    report = (cwd / "search" / "report.md").read_text()
    assert not (cwd / "search" / "tb").exists() and "`tb/`" not in report
    assert "TensorBoard not written: tensorboard is not installed (pip install jetvit[tensorboard])" in report
    assert "TensorBoard events not written" in tour["search"].stdout
    # The FLOPs comparison says fewer or more, as it is.
    word = "fewer" if summary["flops"] < summary["teacher_flops"] else "more"
    assert f"x {word} FLOPs than the teacher" in report and f"x {word} FLOPs" in tour["search"].stdout
    # keep_checkpoints: last (the default) keeps only what a resume needs.
    assert sorted(p.name for p in (cwd / "search" / "ckpt").iterdir()) == ["finetune.pt"]
    assert not temporaries(cwd)


# --- bad inputs ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The inputs the bad cases read: a copy of the built-in teacher, broken config.json variants, broken files."""
    root = tmp_path_factory.mktemp("inputs")
    teacher = root / "teacher"
    shutil.copytree(ASSET_DIR, teacher)
    meta = json.loads((teacher / "config.json").read_text())
    broken = {
        "heads_str": lambda m: m["config"].update(num_heads="3"),
        "patch_float": lambda m: m["config"].update(patch_size=8.0),
        "depth_str": lambda m: m["config"].update(depth="8"),
        "no_config": lambda m: m.pop("config"),
        "no_registers": lambda m: m["config"].pop("num_registers"),
    }
    paths = {"teacher": teacher}
    for name, edit in broken.items():
        d = root / name
        d.mkdir()
        (d / "model.safetensors").symlink_to(teacher / "model.safetensors")
        m = json.loads(json.dumps(meta))
        edit(m)
        (d / "config.json").write_text(json.dumps(m))
        paths[name] = d
    (root / "bad_json").mkdir()
    (root / "bad_json" / "config.json").write_text('{"format": "jetvit",')
    paths["bad_json"] = root / "bad_json"
    (root / "bad.yaml").write_text("teacher: builtin\nstep1: [\n")
    paths["bad_yaml"] = root / "bad.yaml"

    import argparse

    torch.save({"w": argparse.Namespace(a=1)}, root / "code.pth")  # any class: unpickling it runs its code
    paths["code_pickle"] = root / "code.pth"
    # An official DINOv3 checkpoint of the built-in teacher (the same layout) with one tensor of the wrong width.
    sd = {("storage_tokens" if k == "register_tokens" else k): v for k, v in jetvit.load(teacher).state_dict().items()}
    sd["blocks.5.norm1.weight"] = torch.ones(200)
    torch.save(sd, root / "dinov3_wrong.pth")
    paths["wrong_shape"] = root / "dinov3_wrong.pth"
    paths["file"] = root / "a-file"
    paths["file"].write_text("not a folder")
    paths["empty"] = root / "empty"
    paths["empty"].mkdir()
    # Four images, the two the search holds out unreadable.
    folder = root / "four"
    folder.mkdir()
    _, held = split_holdout(4, 2)
    for i in range(4):
        path = folder / f"{i}.png"
        if i in held:
            path.write_bytes(b"\x89PNG broken")
        else:
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(path)
    paths["four"] = folder
    return paths


def tiny(*extra: str) -> list[str]:
    return ["--config", "tiny", *sets(*extra)]


def _cases(f: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the one line must hold)."""
    t = str(f["teacher"])
    out = str(tmp / "out")
    truncated = tmp / "truncated"
    (truncated / "ckpt").mkdir(parents=True)
    (truncated / "ckpt" / "step1.pt").write_bytes(b"PK\x03\x04 cut short")
    bad_state = tmp / "bad_state"
    bad_state.mkdir()
    (bad_state / "state.json").write_text('{"phases": {')
    bad_run_yaml = tmp / "bad_run_yaml"
    bad_run_yaml.mkdir()
    (bad_run_yaml / "config.yaml").write_text("teacher: [\n")
    return {
        # the output folder
        "out is a file": (["convert", "--teacher", t, "--arch", "LLLLLLLL", "--out", str(f["file"])],
                          "already exists as a file where a folder is needed"),
        "out under a file": (["convert", "--teacher", t, "--arch", "LLLLLLLL", "--out", str(f["file"] / "x")],
                             "a part of this path is a file"),
        "out not writable": (["convert", "--teacher", t, "--arch", "LLLLLLLL", "--out", "/sys/jetvit-test-out"],
                             "/sys/jetvit-test-out"),
        "run out is a file": (["search", *tiny(), "--out", str(f["file"])], "is a file"),
        "export out is a folder": (["export", "--model", t, "--res", "64", "--out", str(tmp)], "is a folder"),
        # files in the wrong format
        "config yaml syntax": (["search", "--config", str(f["bad_yaml"]), "--out", out],
                               f"config {f['bad_yaml']} is not valid YAML (line 3"),
        "run config.yaml syntax": (["search", *tiny(), "--out", str(bad_run_yaml)],
                                   f"{bad_run_yaml / 'config.yaml'} is not valid YAML"),
        "override yaml": (["search", *tiny("step1.beam=[1"), "--out", out], "override 'step1.beam=[1'"),
        "state.json": (["distill", *tiny(), "--arch", "LLLLLLLL", "--out", str(bad_state)],
                       f"{bad_state / 'state.json'} is not valid JSON"),
        "config.json not json": (["info", str(f["bad_json"])], f"{f['bad_json'] / 'config.json'} is not valid JSON"),
        "num_heads a string": (["info", str(f["heads_str"])], "num_heads: expected an integer, got '3'"),
        "patch_size a float": (["info", str(f["patch_float"])], "patch_size: expected an integer, got 8.0"),
        "depth a string": (["convert", "--teacher", str(f["depth_str"]), "--arch", "LFLWLFWL", "--out", out],
                           "depth: expected an integer, got '8'"),
        "config.json without config": (["info", str(f["no_config"])], "missing or malformed key 'config'"),
        "config.json without num_registers": (["info", str(f["no_registers"])], "config.num_registers"),
        "truncated checkpoint": (["search", *tiny(), *QUICK, "--out", str(truncated)],
                                 f"checkpoint {truncated / 'ckpt' / 'step1.pt'} cannot be read"),
        "pickle with code": (["info", str(f["code_pickle"])], "jetvit never runs code from a file"),
        "wrong-shape tensor": (["info", str(f["wrong_shape"]), "--num-heads", "3"],
                               "blocks.5.norm1.weight (gives 200)"),
        # config values
        "data.scale one value": (["search", *tiny("data.scale=[0.5]"), "--out", out], "data.scale must be [lo, hi]"),
        "score.batch_size 0": (["search", *tiny("score.batch_size=0"), "--out", out], "score.batch_size must be >= 1"),
        "lr nan": (["search", *tiny("finetune.stages.0.lr=.nan"), "--out", out],
                   "finetune.stages.0.lr must be a finite number"),
        "eps 0": (["search", *tiny("supernet.linear.eps=0"), "--out", out], "linear.eps must be a finite number > 0"),
        "keep_checkpoints": (["search", *tiny("run.keep_checkpoints=some"), "--out", out], "run.keep_checkpoints"),
        "impossible budget": (["search", *tiny("budget.max_gflops=0.5"), "--out", out],
                              "cannot be met: the cheapest architecture"),
        "arch typo": (["distill", *tiny(), "--arch", "LWLX", "--out", out], "unknown letters ['X']"),
        "arch length": (["distill", *tiny(), "--arch", "LWL", "--out", out], "has 3 letters but the model has 8"),
        # data
        "held-out images unreadable": (["search", *tiny(f"data.source={f['four']}"), "--out", out],
                                       "among the 2 held-out images of folder"),
        "empty folder": (["search", *tiny(f"data.source={f['empty']}"), "--out", out], "holds no images"),
        "no teacher": (["search", *tiny(f"teacher={tmp / 'nope'}"), "--out", out], "no such file or directory"),
    }  # fmt: skip


@pytest.fixture
def cases(files, tmp_path) -> dict[str, tuple[list[str], str]]:
    return _cases(files, tmp_path)


CASE_NAMES = [
    "out is a file", "out under a file", "out not writable", "run out is a file", "export out is a folder",
    "config yaml syntax", "run config.yaml syntax", "override yaml", "state.json", "config.json not json",
    "num_heads a string", "patch_size a float", "depth a string", "config.json without config",
    "config.json without num_registers", "truncated checkpoint", "pickle with code", "wrong-shape tensor",
    "data.scale one value", "score.batch_size 0", "lr nan", "eps 0", "keep_checkpoints",
    "impossible budget", "arch typo", "arch length", "held-out images unreadable", "empty folder", "no teacher",
]  # fmt: skip


def one_line_error(capsys, rc: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.out + captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("jetvit ") and ": error: " in lines[0]
    return lines[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_naming_the_problem(name, cases, files, capsys):
    argv, expected = cases[name]
    before = digest(files["teacher"])
    line = one_line_error(capsys, main(argv))
    assert expected in line
    assert digest(files["teacher"]) == before


def test_the_table_covers_every_case(cases):
    assert sorted(cases) == sorted(CASE_NAMES)


def test_a_diverged_run_is_an_error_not_a_result(tmp_path, capsys):
    argv = ["distill", *tiny("finetune.stages.0.lr=1e12", "optim.grad_clip=null"), "--arch", "LWLWLFLW", "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err  # after the progress bars
    assert "Traceback" not in err
    assert "loss of finetune is nan: training diverged" in err.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_flops_comparison_says_fewer_or_more():
    from jetvit.report import flops_comparison

    assert flops_comparison(100.0, 50.0) == "2.00x fewer FLOPs than the teacher"
    assert flops_comparison(100.0, 110.0) == "1.10x more FLOPs than the teacher"
    assert flops_comparison(100.0, 100.2) == "the same FLOPs as the teacher"


def test_exponent_floats_are_numbers_as_in_yaml_1_2():
    from jetvit.config import load_config

    cfg = load_config("tiny", ["finetune.stages.0.lr=1e-4", "optim.weight_decay=5E-2"])
    assert (cfg.finetune.stages[0].lr, cfg.optim.weight_decay) == (1e-4, 0.05)


def test_only_atomic_write_temporaries_are_removed(tmp_path):
    from jetvit.io import remove_stale_temporaries

    stale = [tmp_path / ".state.json.ab_cd123.tmp", tmp_path / "ckpt" / ".step1.pt.0123abcd.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "ckpt" / ".x.pt.TOOLONG12.tmp"]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_missing_optional_packages_say_which_extra(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    rc = main(["export", "--model", str(files["teacher"]), "--res", "64", "--out", str(tmp_path / "m.onnx")])
    assert "pip install jetvit[onnx]" in one_line_error(capsys, rc)
    monkeypatch.setitem(sys.modules, "skimage", None)
    rc = main(["search", *tiny("data.source=skimage"), "--out", str(tmp_path / "run")])
    assert "pip install jetvit[skimage]" in one_line_error(capsys, rc)
    assert not (tmp_path / "run").exists()


def test_outputs_never_overwrite_their_sources(files, tmp_path, monkeypatch, capsys):
    teacher = files["teacher"]
    before = digest(teacher)
    rc = main(["convert", "--teacher", str(teacher), "--arch", "LLLLLLLL", "--out", str(teacher)])
    assert "is the --teacher" in one_line_error(capsys, rc)
    # `builtin` is the installed teacher: pointed at the copy here, so that a failure could not damage the real one.
    monkeypatch.setattr("jetvit.teachers.BUILTIN_DIR", teacher)
    rc = main(["convert", "--teacher", "builtin", "--arch", "LLLLLLLL", "--out", str(teacher) + "/"])
    assert "is the --teacher" in one_line_error(capsys, rc)
    rc = main(["export", "--model", str(teacher), "--res", "64", "--out", str(teacher / "model.safetensors")])
    assert "model's weights" in one_line_error(capsys, rc)
    rc = main(["search", *tiny(f"teacher={teacher}"), "--out", str(teacher)])
    assert "is the teacher" in one_line_error(capsys, rc)
    rc = main(["search", *tiny(f"data.source={files['four']}"), "--out", str(files["four"] / "run")])
    assert "is inside the data.source folder" in one_line_error(capsys, rc)
    assert digest(teacher) == before and not (files["four"] / "run").exists()


def test_sixteen_bit_and_other_png_modes_read_as_rgb(tmp_path):
    from jetvit.tasks.datasets import read_image
    from jetvit.train.data import FolderImages

    gray16 = np.full((4, 6), 32896, np.uint16)  # 32896 / 257 = 128: mid grey, not white
    Image.fromarray(gray16).save(tmp_path / "a_gray16.png")
    Image.fromarray(np.full((4, 6), 200, np.uint8)).save(tmp_path / "b_gray8.png")
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[0, 0, 3] = 0  # one transparent pixel: white, as a viewer shows it
    Image.fromarray(rgba).save(tmp_path / "c_rgba.png")
    Image.fromarray(np.full((4, 6), 3, np.uint8)).convert("P").save(tmp_path / "d_palette.png")
    source = FolderImages(tmp_path)
    loaded = {source.name(i)[0]: np.asarray(source.load(i)) for i in range(len(source))}
    assert all(a.shape == (4, 6, 3) and a.dtype == np.uint8 for a in loaded.values())
    assert (loaded["a"] == 128).all()
    assert (loaded["b"] == 200).all() and (loaded["d"] == 3).all()
    assert (loaded["c"][0, 0] == 255).all() and (loaded["c"][1, 1] == [255, 0, 0]).all()
    torch.testing.assert_close(read_image(tmp_path / "a_gray16.png"), torch.full((3, 4, 6), 128 / 255))


# --- runs that fail at start-up, are killed, or interrupted ----------------------------------------------------------


def test_failed_start_writes_nothing_and_the_corrected_command_runs(files, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    good = ["distill", *tiny(), "--arch", "LWLWLFLW", "--out", out]
    failures = [
        ["distill", *tiny(f"teacher={tmp_path / 'no-teacher'}"), "--arch", "LWLWLFLW", "--out", out],
        ["distill", *tiny(f"data.source={files['empty']}"), "--arch", "LWLWLFLW", "--out", out],
        ["distill", *tiny(), "--arch", "LWLWLFLX", "--out", out],
        ["distill", *tiny("score.resolution=30"), "--arch", "LWLWLFLW", "--out", out],
    ]
    for argv in failures:
        one_line_error(capsys, main(argv))
        assert not Path(out).exists(), argv
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "skimage", None)
        one_line_error(capsys, main(["distill", *tiny("data.source=skimage"), "--arch", "LWLWLFLW", "--out", out]))
    assert not Path(out).exists()
    assert main(good) == 0, capsys.readouterr().err
    assert jetvit.load(Path(out) / "model").arch == "LWLWLFLW" and not temporaries(Path(out))


def test_killed_mid_write_the_repeated_command_resumes_and_cleans_up(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", *tiny("finetune.stages.0.steps=8", "run.checkpoint_every=1"), "--arch", "LWLWLFLW",
            "--out", str(out)]  # fmt: skip
    proc = jetvit_cli(*args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "ckpt" / "finetune.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    # What a kill inside torch.save / a JSON write leaves: atomic_write's temporaries, cut short.
    (out / "ckpt" / ".finetune.pt.k1ll3d_x.tmp").write_bytes(ckpt.read_bytes()[:100])
    (out / ".summary.json.abcd1234.tmp").write_text('{"arch": ')
    assert main(args) == 0, capsys.readouterr().err
    assert "resuming finetune" in capsys.readouterr().out
    assert not temporaries(out)
    assert jetvit.load(out / "model").arch == "LWLWLFLW"


def test_keep_checkpoints_none_and_all(tmp_path, capsys):
    none = ["search", *tiny("run.keep_checkpoints=none"), *QUICK, "--out", str(tmp_path / "none")]
    assert main(none) == 0
    assert not (tmp_path / "none" / "ckpt").exists()
    first = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert "checkpoints were removed at the end" in (tmp_path / "none" / "report.md").read_text()
    assert main(none) == 0  # a finished run started again reloads its exported model
    again = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert (again["arch"], again["final_score"]) == (first["arch"], first["final_score"])
    every = ["search", *tiny("run.keep_checkpoints=all"), *QUICK, "--out", str(tmp_path / "all")]
    assert main(every) == 0
    assert sorted(p.name for p in (tmp_path / "all" / "ckpt").iterdir()) == ["finetune.pt", "step1.pt", "step2.pt"]
    capsys.readouterr()


def test_ctrl_c_ends_in_one_line_and_by_sigint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["distill", *tiny("finetune.stages.0.steps=400"), "--arch", "LWLWLFLW", "--out", str(out)]
    proc = jetvit_cli(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:  # until a training step has been logged
        if metrics.exists() and '"loss"' in metrics.read_text():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT, err  # as Python on an unhandled Ctrl-C: the shell's status 130
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("jetvit distill: interrupted (run the same command again to continue from the last checkpoint)")
    )
    assert not temporaries(out)
    # The step in flight finished and was saved at the interrupt, not only at the periodic checkpoints.
    ck = torch.load(out / "ckpt" / "finetune.pt", map_location="cpu", weights_only=True)
    assert not ck["done"] and ck["step"] >= 1
    # Called from Python, main returns 130.

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("jetvit.cli.info.run", interrupted)
    assert main(["info", "builtin"]) == 130
    assert capsys.readouterr().err == "jetvit info: interrupted\n"


def test_a_closed_pipe_ends_quietly(tmp_path):
    proc = jetvit_cli("info", "builtin", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head` that has read enough
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == 141 and err == ""


def test_distill_options_for_fast_learning_through_the_cli(tmp_path, capsys):
    """distill.targets=all, distill.inherit=mlp and run.eval_every through the real CLI on the built-in teacher."""
    out = tmp_path / "run"
    args = ["distill", *tiny("distill.targets=all", "distill.inherit=mlp", "run.eval_every=2",
                             "finetune.stages.0.steps=4"), "--arch", "lfLWLFwl", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == "LFLWLFWL"
    assert [step for step, _ in summary["finetune"]["curve"]] == [2, 4]  # every 2 steps, and the last
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("score" in m for m in logged) == 2
    cfg = (out / "config.yaml").read_text()
    assert "targets: all" in cfg and "inherit: mlp" in cfg
    # inherit=mlp re-initialised the attention projections: they differ from the teacher's.
    student, teacher = jetvit.load(out / "model"), jetvit.load_teacher("builtin")
    assert not torch.equal(student.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight)
    capsys.readouterr()


def test_step2_stop_at_teacher_through_the_cli(tmp_path):
    """step2.stop_at_teacher: with a scorer under which every candidate matches the teacher, Step 2 stops at once
    (the Step-1 architecture already scores as the teacher); false, it puts F blocks back up to step2.max_full."""
    common = ["score.scorer=test_search_plugin_scorer:constant", "step2.max_full=2", "finetune.stages.0.steps=1"]
    found = {}
    for stop in ("true", "false"):
        out = tmp_path / stop
        assert main(["search", *tiny(*common, f"step2.stop_at_teacher={stop}"), "--out", str(out)]) == 0
        traj = json.loads((out / "trajectory.json").read_text())["step2"]
        found[stop] = (json.loads((out / "summary.json").read_text()), traj)
    summary, traj = found["true"]
    assert "reached the target" in traj["stop_reason"] and summary["arch"] == summary["step1_arch"]
    summary, traj = found["false"]
    assert "target" not in (traj["stop_reason"] or "")
    assert max(a.count("F") for a in traj["scores"]) == 2  # every round ran, up to the F budget
