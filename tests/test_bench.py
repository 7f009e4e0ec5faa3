"""`jetvit bench` through the real CLI on the tiny preset: what it writes, and the pieces it is built from."""

from __future__ import annotations

import json

import pytest
import torch

from jetvit.bench.harness import (
    BenchOptions,
    choose_fastest,
    make_runner,
    parse_res,
    sdpa_context,
    summarize,
    throughput_batch,
    time_interleaved,
)
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


def test_bench_cli_compiled_mode_at_a_fixed_batch(tmp_path, monkeypatch):
    # Dynamo's tracing without code generation: the regional compile path in seconds on the CPU.
    monkeypatch.setenv("JETVIT_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    out = tmp_path / "bench"
    argv = ["bench", "--preset", "tiny", "--arch", "FWL", "--res", "80x96", "--repeats", "2", "--warmup", "1"]
    argv += ["--threads", "1", "--compile", "--batch", "2", "--no-memory", "--dtype", "bf16", "--out", str(out)]
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # a process-wide count that reset() keeps
    try:
        assert main(argv) == 0
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    finally:
        torch._dynamo.reset()
    # One graph per block kind (F, W, L; the teacher's F blocks share the hybrid's) and shape (batch 1, batch 2).
    assert graphs == 3 * 2
    result = json.loads((out / "bench.json").read_text())
    assert result["options"]["mode"] == "compiled" and result["options"]["dtype"] == "bf16"
    row = result["rows"][0]
    for name in ("teacher", "hybrid"):
        tp = row[name]["throughput"]
        assert tp["batch"] == 2 and len(tp["batch_ms"]["samples"]) == 3
        assert tp["images_per_s"] == pytest.approx(2e3 / tp["batch_ms"]["median"])
    assert row["sdpa"]["backend"] is None  # CPU: PyTorch's order
    assert "| compiled," not in (out / "bench.md").read_text() and ", compiled," in (out / "bench.md").read_text()
    assert main([*argv[:-2], "--mode", "graphs", "--out", str(out)]) == 2  # --compile contradicts --mode graphs


def test_bf16_runner_casts_the_weights_once_and_runs_without_autocast():
    model = HybridViT(preset_config("tiny", "FWL"))
    seen = []
    model.blocks[2].register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu")))
    )
    run = make_runner(model, BenchOptions(resolutions=[(64, 64)], dtype="bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    y = run(torch.randn(1, 3, 64, 64))  # a float32 input is cast to the model's dtype
    assert y.dtype == torch.bfloat16 and seen == [(torch.bfloat16, False)]


def test_options_reject_what_cannot_run():
    with pytest.raises(ValueError, match="mode"):
        BenchOptions(resolutions=[(64, 64)], mode="jit")
    with pytest.raises(ValueError, match="needs --device cuda"):
        BenchOptions(resolutions=[(64, 64)], mode="graphs")
    with pytest.raises(ValueError, match="sdpa_backend"):
        BenchOptions(resolutions=[(64, 64)], sdpa_backend="fast")


def test_throughput_batch_is_the_largest_power_of_two_that_fits():
    gib = 2**30
    assert throughput_batch(gib, 30 * gib, max_batch=32) == 8  # a third of 30 GiB: 10 images -> 8
    assert throughput_batch(gib, 30 * gib, max_batch=4) == 4
    assert throughput_batch(gib, 2 * gib, max_batch=32) == 1  # not even one fits a third: still 1
    assert throughput_batch(0, gib, max_batch=16) == 16


def test_choose_fastest_skips_backends_without_a_kernel():
    def time_candidate(name: str) -> float:
        if name == "flash":
            raise RuntimeError("No available kernel. Aborting execution.\nmore")
        return {"cudnn": 3.0, "efficient": 2.0}[name]

    best, trials = choose_fastest(time_candidate)
    assert best == "efficient"
    assert trials == {"flash": "failed: No available kernel. Aborting execution.", "cudnn": 3.0, "efficient": 2.0}
    assert choose_fastest(time_candidate, ("flash",)) == (None, {"flash": trials["flash"]})


def test_sdpa_context_puts_one_backend_first_and_keeps_the_others():
    from torch.nn.attention import SDPBackend

    before = torch._C._get_sdp_priority_order()
    with sdpa_context("cudnn"):
        order = torch._C._get_sdp_priority_order()
        flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled())
    assert order[0] == int(SDPBackend.CUDNN_ATTENTION) and sorted(order) == sorted(before)
    assert flags == (True, True)  # nothing forced: a call cuDNN cannot take falls through
    assert torch._C._get_sdp_priority_order() == before
    with sdpa_context(None):
        assert torch._C._get_sdp_priority_order() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("mode", "backend"), [("eager", "auto"), ("compiled", "flash"), ("graphs", "auto")])
def test_bench_cli_on_cuda_in_each_mode(tmp_path, mode, backend):
    out = tmp_path / "bench"
    # 80x96 at patch 16: a 5x6 grid that 4x4 windows do not divide, so the W block's windows are masked.
    argv = ["bench", "--preset", "tiny", "--arch", "FWL", "--res", "80x96", "--repeats", "3", "--device", "cuda"]
    argv += ["--dtype", "bf16", "--mode", mode, "--sdpa-backend", backend, "--batch", "4", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    row = result["rows"][0]
    assert result["machine"]["gpu"] and result["options"]["mode"] == mode
    assert row["hybrid"]["peak_memory"]["bytes"] > 0 and row["hybrid"]["throughput"]["batch"] == 4
    if backend == "auto":  # the teacher's candidates were tried and the fastest that ran was kept
        trials = row["sdpa"]["trials_ms"]
        ran = {n: t for n, t in trials.items() if isinstance(t, float)}
        assert set(trials) == {"flash", "cudnn", "efficient"} and row["sdpa"]["backend"] == min(ran, key=ran.get)
    else:
        assert row["sdpa"]["backend"] == backend


def test_latency_table_command_measures_caches_and_predicts(tmp_path, capsys):
    """`jetvit bench --latency-table`: the table the search reads, measured and cached (a second call reads it back),
    or predicted by the cost model; --arch adds that hybrid's predicted time; a size the model cannot take is one
    line."""
    argv = ["bench", "--preset", "tiny", "--latency-table", "--res", "64", "--repeats", "1", "--out", str(tmp_path)]
    assert main([*argv, "--arch", "LWF"]) == 0
    first = capsys.readouterr().out
    assert "one `F` block" in first and "`LWF`:" in first and "measured; wrote" in first
    saved = json.loads((tmp_path / "latency-64x64.json").read_text())
    assert saved["setting"]["source"] == "measured" and set(saved["blocks"]) == set("FWL")
    assert main(argv) == 0
    assert "from the cache" in capsys.readouterr().out
    assert json.loads((tmp_path / "latency-64x64.json").read_text()) == saved
    assert main([*argv, "--predict", "h100", "--dtype", "bf16"]) == 0
    assert "(cost model)" in capsys.readouterr().out
    assert main([*argv[:-4], "--res", "65", "--out", str(tmp_path)]) == 2
    assert "65" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--res", "64"]) == 2  # a comparison needs --arch
    assert "--arch is needed" in capsys.readouterr().err
