"""The replication command end to end on its tiny setting: every table is filled from real runs."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import replicate  # noqa: E402


@pytest.mark.slow
def test_replicate_tiny_writes_every_table(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "replicate.py"), "--tiny", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    res = json.loads((tmp_path / "replication.json").read_text())
    assert res["seeds"] == [0, 1] and res["teacher_arch"] == "FFFF" and res["devices"] == ["cpu"]
    search = res["search_table"]
    # Step 2 goes on to 3 F blocks whether or not fewer already match the teacher (step2.stop_at_teacher: false)
    rows = ("teacher", "pure L", "pure W", "Step 1 (L/W)") + tuple(f"Step 2, {k} F" for k in range(4))
    for row in rows:
        assert len(search[row]["miou"]) == 2 and all(0 <= v <= 1 for v in search[row]["miou"])
    assert search["pure L"]["archs"] == ["LLLL", "LLLL"] and search["pure W"]["archs"] == ["WWWW", "WWWW"]
    for by_count in res["positions"].values():
        for k, pos in by_count.items():
            assert len(pos) == int(k)
    assert all(row["step_time"] > 0 and len(row["miou"]) == 2 for row in res["linear_table"].values())
    assert all(len(row["miou"]) == 2 == len(row["miou_at_conversion"]) for row in res["inherit_table"].values())
    # the verdict names the RoPE row with the higher mean mIoU
    rope = {name.removesuffix(" (default)"): statistics.mean(row["miou"]) for name, row in res["rope_table"].items()}
    best = "tie" if rope["rope on"] == rope["rope off"] else max(rope, key=rope.get)
    assert res["rope_choice"] == best
    assert all(row["32x32"]["ms"] > 0 and row["128x128"]["ms"] > 0 for row in res["speed_table"].values())
    md = (tmp_path / "replication.md").read_text()
    tables = ("search_table", "linear_table", "inherit_table", "rope_table", "speed_table")
    for name in (row for table in tables for row in res[table]):
        assert f"| {name} |" in md, name  # every row of the results is in the report
    assert f"**{res['rope_choice']}**" in md
    assert (tmp_path / "replication.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot, linked from the md
    assert "(replication.png)" in md
    # a rerun reuses the finished runs instead of training again
    runs = sorted((tmp_path / "replication-work" / "seed0" / "runs").iterdir())
    assert runs and all((r / "result.json").is_file() for r in runs)


@pytest.mark.slow
def test_replicate_search_only_with_blockwise_supernets(tmp_path):
    """`--search-only --sampling blockwise`: each seed's search (the paper's criterion, no front or latency table,
    block-wise supernets at half the steps) and its 2-F row, tabulated against the teacher; a rerun reuses both."""
    argv = ["--tiny", "--search-only", "--sampling", "blockwise", "--out", str(tmp_path)]
    assert replicate.main(argv) == 0
    res = json.loads((tmp_path / "replication-search-blockwise.json").read_text())
    assert res["sampling"] == "blockwise" and [r["seed"] for r in res["rows"]] == [0, 1]
    assert res["supernet_steps"] == [1, 1]  # the tiny budget's 2 and 2, halved
    for r in res["rows"]:
        assert r["arch"].count("F") == 2 and abs(r["delta"] - (r["miou"] - res["teacher_miou"])) < 1e-12
        assert r["within"] == (r["delta"] >= -replicate.WITHIN / 100)
    assert res["goal_met"] == all(r["within"] for r in res["rows"])
    for seed in (0, 1):
        summary = json.loads((tmp_path / "replication-work" / f"seed{seed}" / "search" / "summary.json").read_text())
        assert summary["criterion"] == "paper" and not summary.get("front")
    assert "| 0 |" in (tmp_path / "replication-search-blockwise.md").read_text()
    before = {p: p.stat().st_mtime for p in (tmp_path / "replication-work").rglob("result.json")}
    assert replicate.main(argv) == 0
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "replication-work").rglob("result.json")}
