"""`jetvit info` and `jetvit convert` run on a tiny teacher, checked by what they print and write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jetvit
from jetvit.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def teacher_dir(hf_dinov3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "hf"
    hf_dinov3(num_hidden_layers=3).save_pretrained(out)
    return out


def test_info_json_reports_the_model(teacher_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(teacher_dir), "--res", "64x96", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = jetvit.load_teacher(teacher_dir)
    flops = model.flops(64, 96)
    assert (info["family"], info["arch"], info["resolution"]) == ("dinov3", "FFF", [64, 96])
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert info["flops"]["total"] == flops["total"]
    assert [b["flops"] for b in info["blocks"]] == flops["blocks"]
    assert [b["kind"] for b in info["blocks"]] == ["F", "F", "F"]
    assert info["size"].startswith("custom")


def test_convert_writes_a_hybrid_that_inherits_the_teacher(
    teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student"
    assert (
        main(["convert", "--teacher", str(teacher_dir), "--arch", "LWF", "--out", str(out), "--window-size", "2"]) == 0
    )
    assert "LWF" in capsys.readouterr().out
    student, teacher = jetvit.load(out), jetvit.load_teacher(teacher_dir)
    assert [type(b.attn).__name__ for b in student.blocks] == ["LinearAttention", "WindowAttention", "FullAttention"]
    assert student.cfg.window_size == 2
    t = teacher.state_dict()
    for name, tensor in t.items():
        assert torch.equal(student.state_dict()[name], tensor), name

    # The saved hybrid is itself a valid `info` source, with its per-block table.
    assert main(["info", str(out), "--res", "64"]) == 0
    report = capsys.readouterr().out
    assert "LWF" in report and "window 2" in report
    assert sum(1 for line in report.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])) == 3


def test_convert_inherit_mlp_reinitialises_attention(
    teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student"
    assert main(["convert", "--teacher", str(teacher_dir), "--arch", "FFF", "--out", str(out), "--inherit", "mlp"]) == 0
    student, teacher = jetvit.load(out).state_dict(), jetvit.load_teacher(teacher_dir).state_dict()
    assert not torch.equal(student["blocks.0.attn.qkv.weight"], teacher["blocks.0.attn.qkv.weight"])
    assert torch.equal(student["blocks.0.mlp.fc1.weight"], teacher["blocks.0.mlp.fc1.weight"])


def test_cli_errors_are_one_line(teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--teacher", str(teacher_dir), "--arch", "FFQ", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown letters ['Q']" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["info", str(teacher_dir), "--res", "65x64"]) == 2
    assert "not a positive multiple of the patch size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", str(teacher_dir), "--res", "big"])


def test_module_entry_point(teacher_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "jetvit", "info", str(teacher_dir)], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "family       dinov3" in proc.stdout and "FFF" in proc.stdout


def test_convert_official_dav2_file_with_options(
    tiny_depth_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # patch 14 as released; the head's widths, not the default ones, must be read from the file's shapes
    head = {"out_channels": [8, 12, 16, 20], "head_hidden": 8}
    source = tiny_depth_model(img_size=56, patch_size=14, head=head).state_dict()
    # jetvit's names are the official ones; an official DAv2 file puts the backbone under `pretrained.`.
    official = {(k if k.startswith("depth_head.") else f"pretrained.{k}"): v for k, v in source.items()}
    torch.save(official, tmp_path / "dav2_tiny.pth")
    args = ["--num-heads", "2", "--head-layers", "0,1,2,3", "--metric", "--max-depth", "20"]
    out = tmp_path / "student"
    assert (
        main(["convert", "--teacher", str(tmp_path / "dav2_tiny.pth"), "--arch", "LLFF", "--out", str(out), *args]) == 0
    )
    student = jetvit.load(out)
    assert student.arch == "LLFF" and student.cfg.pos_interp == "official"
    assert student.cfg.depth_head["metric"] and student.cfg.depth_head["max_depth"] == 20
    for name, tensor in source.items():
        assert torch.equal(student.state_dict()[name], tensor), name
    capsys.readouterr()
    assert main(["info", str(tmp_path / "dav2_tiny.pth"), "--json", *args]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["depth_head"] and info["parameters"]["head"] > 0 and info["family"] == "depth_anything_v2"
