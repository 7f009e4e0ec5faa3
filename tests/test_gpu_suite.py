"""The device script's CPU dry run (`benchmarks/gpu_suite.py --dry-run`): the code path the GPU runs, on the tiny
preset, in seconds: the files it writes, the JSON's schema, the table it prints last, its time guard and row order."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu_suite  # noqa: E402

from jetvit.bench.presets import preset_config  # noqa: E402
from jetvit.model import HybridViT  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_dry_run_writes_the_files_the_schema_and_prints_the_table_last(tmp_path, capsys):
    out = tmp_path / "suite"
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # process-wide; reset() keeps it
    assert gpu_suite.main(["--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["suite.json", "suite.log", "table.md"]  # <= 8 files come back
    res = json.loads((out / "suite.json").read_text())
    assert res["schema"] == gpu_suite.SCHEMA and res["dry_run"] and res["dtype"] == "bf16"
    assert res["smoke"]["ok"] and res["tests"] == {"ran": False, "summary": "not run (dry run)"}
    assert res["machine"]["device"] == "cpu" and res["elapsed_s"] > 0
    assert res["models"]["tiny"] == {
        "preset": "tiny",
        "teacher": "FFF",
        "hybrid": "FWL",
        "f_positions": [0],
        "indexing": "0-based",
        "head": False,
        "window": 4,
        "linear_conv": "dynamic",
    }
    # Two rows ran (eager, compiled); CUDA graphs were skipped with their reason; nothing failed.
    assert [r["mode"] for r in res["rows"]] == ["eager", "compiled"]
    assert res["skipped"] == [{"model": "tiny", "res": [80, 96], "mode": "graphs", "reason": "CUDA graphs need a GPU"}]
    assert res["errors"] == [] and res["complete"] is False  # a skipped row leaves the table incomplete
    teacher, hybrid = HybridViT(preset_config("tiny")), HybridViT(preset_config("tiny", "FWL"))
    for row in res["rows"]:
        assert row["model"] == "tiny" and row["res"] == [80, 96] and row["tokens"] == 5 + 5 * 6
        for name, m in (("teacher", teacher), ("hybrid", hybrid)):
            lat = row[name]["latency_ms"]
            assert len(lat["samples"]) == 2 and 0 < lat["min"] <= lat["median"] <= lat["max"]
            assert row[name]["flops"] == m.flops(80, 96)["total"]
            assert row[name]["throughput"]["batch"] == 2 and row[name]["throughput"]["images_per_s"] > 0
        assert row["speedup"]["measured"] == pytest.approx(
            row["teacher"]["latency_ms"]["median"] / row["hybrid"]["latency_ms"]["median"]
        )
        assert row["sdpa"]["backend"] is None and row["seconds"] > 0
        pred = row["prediction"]  # the cost model's, for the H100, beside the measurement
        assert pred["device"] == "h100" and pred["speedup"] == pytest.approx(
            pred["latency_ms"]["teacher"] / pred["latency_ms"]["hybrid"]
        )
    # The compiled row compiled: one graph per block kind and shape (batch 1, batch 2).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 3 * 2
    table = (out / "table.md").read_text()
    assert table.count("\n| tiny | 80x96 |") == 2 and "skipped: tiny 80x96 graphs" in table
    assert printed.endswith(table)  # the table is the last thing printed (the device shows the output's end)
    assert "smoke ok" in printed and "smoke ok" in (out / "suite.log").read_text()
    # (d) the search's latency table, measured (on the CPU in the dry run) beside the cost model's
    lat = res["latency_table"]
    assert lat["measured"]["setting"]["resolution"] == [80, 96] and set(lat["measured"]["blocks"]) == set("FWL")
    assert lat["predicted"]["setting"]["source"] == "predicted" and set(lat["measured"]["check"]) >= {"FFF", "LLL"}


def test_rows_that_cannot_fit_the_budget_are_skipped_and_said_so(tmp_path, capsys):
    # A 3 s budget fits no dry-run row (each is estimated at 5 s or more before one has run).
    assert gpu_suite.main(["--dry-run", "--budget-s", "3", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "suite.json").read_text())
    assert res["rows"] == [] and not res["complete"]
    reasons = {s["mode"]: s["reason"] for s in res["skipped"]}
    assert reasons["eager"].startswith("time: needs ~5 s") and reasons["compiled"].startswith("time: needs ~10 s")
    assert res["latency_table"] == {"skipped": "the budget ran out"}
    assert "skipped: tiny 80x96 eager: time" in capsys.readouterr().out


def test_the_table_starts_with_dinov3_l_at_1024x2048_and_compiles_last():
    rows = [(p.name, r, m) for p, r, m in gpu_suite.plan_rows(gpu_suite.PAIRS, gpu_suite.MODES)]
    assert len(rows) == len(set(rows)) == 3 * 3 * 3
    assert rows[:3] == [("dinov3-l", (1024, 2048), m) for m in ("eager", "graphs", "compiled")]
    first_other_compiled = next(i for i, r in enumerate(rows[3:], 3) if r[2] == "compiled")
    assert all(r[2] == "compiled" for r in rows[first_other_compiled:])
    assert rows[3:5] == [("dinov3-b", (1024, 2048), "eager"), ("dinov3-b", (1024, 2048), "graphs")]


def test_the_hybrids_keep_f_where_the_paper_puts_it():
    # The paper's positions (0-based here): DINOv3 14 and 22, Depth-Anything-V2 13 and 17; ViT-B at the same fractions.
    expected = {"dinov3-l": [14, 22], "dinov3-b": [7, 11], "dav2-l": [13, 17]}
    for pair in gpu_suite.PAIRS:
        cfg = preset_config(pair.preset, pair.arch)  # validates the string against the preset's depth
        assert pair.f_positions == expected[pair.name] and pair.arch[0] == "L" and set(pair.arch) == {"L", "W", "F"}
        assert pair.arch in gpu_suite.__doc__  # the strings the docstring names are the ones measured
        for res in pair.resolutions:  # every resolution a multiple of the patch; about 8 megapixels a batch
            assert res[0] % cfg.patch_size == 0 == res[1] % cfg.patch_size
            assert gpu_suite.batch_for(res) * res[0] * res[1] == pytest.approx(8 * 2**20, rel=0.05)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_the_alarm_stops_a_row_at_the_deadline():
    t = time.monotonic()
    with pytest.raises(gpu_suite.DeadlineReached):
        with gpu_suite.alarm_at(time.monotonic() + 0.05):
            time.sleep(5)
    assert time.monotonic() - t < 4
