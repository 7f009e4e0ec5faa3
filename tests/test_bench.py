"""`jetvit bench` through the real CLI on the tiny preset: what it writes, and the pieces it is built from."""

from __future__ import annotations

import json

import pytest
import torch

from jetvit.bench.harness import BenchOptions, parse_res, summarize, time_interleaved
from jetvit.bench.presets import PRESETS, preset_config
from jetvit.cli import main
from jetvit.model import HybridViT


def test_bench_cli_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--preset",
        "tiny",
        "--arch",
        "FWL",
        "--res",
        "64x64",
        "--res",
        "64x128",
        "--repeats",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    assert [r["res"] for r in result["rows"]] == [[64, 64], [64, 128]]
    assert result["models"]["teacher"]["arch"] == "FFF" and result["models"]["hybrid"]["arch"] == "FWL"
    assert "--preset tiny" in result["command"] and result["machine"]["cpu"]
    teacher = HybridViT(preset_config("tiny"))
    hybrid = HybridViT(preset_config("tiny", "FWL"))
    for row in result["rows"]:
        for name in ("teacher", "hybrid"):
            lat = row[name]["latency_ms"]
            assert len(lat["samples"]) == 3 and 0 < lat["min"] <= lat["median"] <= lat["max"]
            assert row[name]["peak_memory"]["bytes"] > 0 and "clear_refs" in row[name]["peak_memory"]["method"]
            assert row[name]["throughput"]["images_per_s"] > 0
        ideal = teacher.flops(*row["res"])["total"] / hybrid.flops(*row["res"])["total"]
        assert row["speedup"]["ideal"] == pytest.approx(ideal)
        assert row["speedup"]["measured"] == pytest.approx(
            row["teacher"]["latency_ms"]["median"] / row["hybrid"]["latency_ms"]["median"]
        )
    table = (out / "bench.md").read_text()
    assert table.count("\n| 64x") == 2 and "speedup" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_bench_cli_rejects_bad_input(tmp_path, capsys):
    base = ["bench", "--preset", "tiny", "--out", str(tmp_path)]
    assert main([*base, "--arch", "FWX", "--res", "64"]) == 2
    assert "unknown letters" in capsys.readouterr().err
    assert main([*base, "--arch", "FWL", "--res", "60x64"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    assert main(["bench", "--preset", "nope", "--arch", "F", "--res", "64"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_presets_build_the_released_shapes():
    cfg = preset_config("dinov3-l", "F" * 24)
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden, cfg.num_prefix_tokens) == (1024, 24, 16, 4096, 5)
    assert preset_config("dinov3-7b").head_dim == 128 and not preset_config("dinov3-7b").qkv_bias
    dav2 = preset_config("dav2-l")
    assert (dav2.patch_size, dav2.num_prefix_tokens, dav2.pos_embed) == (14, 1, "learned")
    assert dav2.depth_head["layers"] == [4, 11, 17, 23]
    assert {"dinov3-s", "dinov3-s+", "dinov3-b", "dinov3-l+", "dinov3-h+", "dav2-s", "dav2-b", "dav2-g"} <= set(PRESETS)


def test_interleaved_timing_and_summary():
    calls = []
    runners = {"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")}
    t = time_interleaved(runners, torch.zeros(1), repeats=3, warmup=1, device="cpu")
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then order flipped every repeat
    assert len(t["a"]) == len(t["b"]) == 3
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0


def test_parse_res_and_options():
    assert parse_res("1024x2048") == (1024, 2048) and parse_res("518") == (518, 518)
    with pytest.raises(ValueError, match="HxW"):
        parse_res("1024by2048")
    with pytest.raises(ValueError, match="dtype"):
        BenchOptions(resolutions=[(64, 64)], dtype="fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["flash", "efficient", "math"])
def test_bench_cli_on_cuda_with_bf16_compile_and_sdpa_backend(tmp_path, backend):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--preset",
        "tiny",
        "--arch",
        "FWL",
        "--res",
        "64x128",
        "--repeats",
        "3",
        "--device",
        "cuda",
        "--dtype",
        "bf16",
        "--compile",
        "--sdpa-backend",
        backend,
        "--batch",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    row = json.loads((out / "bench.json").read_text())["rows"][0]
    assert row["hybrid"]["peak_memory"]["bytes"] > 0 and row["hybrid"]["throughput"]["batch"] == 4
    assert json.loads((out / "bench.json").read_text())["machine"]["gpu"]
