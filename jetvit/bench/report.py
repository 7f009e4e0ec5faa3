"""Writing a benchmark result: JSON (everything, raw samples included), a markdown table and a plot of speedup and
memory against resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jetvit.io import atomic_write_json, atomic_write_text


def run_mode(opts: dict[str, Any]) -> str:
    """The mode of a result's options: "eager" | "compiled" | "graphs" (results written before modes: `compile`)."""
    return opts.get("mode") or ("compiled" if opts.get("compile") else "eager")


def markdown_table(result: dict[str, Any]) -> str:
    """One row per resolution: latencies (median [min-max]), measured and FLOP-ideal speedup, memory, throughput,
    the SDPA backend the models ran with (CUDA)."""
    m, opts = result["machine"], result["options"]
    where = m.get("gpu") or f"{m['cpu']} ({m['torch_threads']} threads)"
    lines = [
        f"teacher `{result['models']['teacher']['arch']}` vs hybrid `{result['models']['hybrid']['arch']}`, "
        f"{opts['device']} {where}, {opts['dtype']}, {run_mode(opts)}, "
        f"{'CPU-time' if opts.get('clock') == 'process' else 'wall-clock'} batch 1 latency over "
        f"{opts.get('repeats_per_input') or opts['repeats']} interleaved repeats "
        f"(warm-up {opts['warmup']}), torch {m['torch']}",
        "",
        "| resolution | tokens | teacher ms | hybrid ms | speedup (pairs min-max) | ideal (FLOPs) | measured/ideal "
        "| teacher peak MiB | hybrid peak MiB | memory ratio | throughput img/s (teacher / hybrid, batch) | SDPA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        t, h, s = r["teacher"], r["hybrid"], r["speedup"]

        def ms(x: dict) -> str:
            lat = x["latency_ms"]
            return f"{lat['median']:.1f} [{lat['min']:.1f}-{lat['max']:.1f}]"

        def mb(x: dict) -> str:
            return f"{x['peak_memory']['bytes'] / 2**20:.1f}" if "peak_memory" in x else "-"

        ideal = f"{s['ideal']:.2f}x" if s["ideal"] else "-"
        frac = f"{s['fraction_of_ideal']:.0%}" if s["fraction_of_ideal"] else "-"
        ratio = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") else "-"
        tt, th = t["throughput"], h["throughput"]
        tp = f"{tt['images_per_s']:.3g} / {th['images_per_s']:.3g} (b{tt['batch']}/{th['batch']})"
        lines.append(
            f"| {r['res'][0]}x{r['res'][1]} | {r['tokens']} | {ms(t)} | {ms(h)} | {s['measured']:.2f}x "
            f"({s['pairs_min']:.2f}-{s['pairs_max']:.2f}) | {ideal} | {frac} | {mb(t)} | {mb(h)} | {ratio} | {tp} "
            f"| {sdpa_label(r)} |"
        )
    lines += ["", f"command: `{result['command']}`", ""]
    return "\n".join(lines)


def sdpa_label(row: dict[str, Any]) -> str:
    """The SDPA backend a row ran with: its name, or "default" (PyTorch's order; also every CPU row)."""
    return (row.get("sdpa") or {}).get("backend") or "default"


def plot(result: dict[str, Any], path: Path) -> None:
    """Speedup (measured with per-repeat spread, and FLOP-ideal) and peak memory against resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{r['res'][0]}x{r['res'][1]}" for r in rows]
    xs = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    meas = [r["speedup"]["measured"] for r in rows]
    err = [
        [m - r["speedup"]["pairs_min"] for m, r in zip(meas, rows)],
        [r["speedup"]["pairs_max"] - m for m, r in zip(meas, rows)],
    ]
    ax1.errorbar(
        xs,
        meas,
        yerr=[[max(e, 0) for e in err[0]], [max(e, 0) for e in err[1]]],
        marker="o",
        capsize=4,
        label="measured (median, pair min-max)",
    )
    if all(r["speedup"]["ideal"] for r in rows):
        ax1.plot(xs, [r["speedup"]["ideal"] for r in rows], "s--", label="ideal (FLOPs)")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set(xticks=xs, xticklabels=labels, xlabel="resolution", ylabel="speedup over teacher", title="speedup")
    ax1.legend()
    if all("peak_memory" in r["teacher"] for r in rows):
        for name in ("teacher", "hybrid"):
            ax2.plot(xs, [r[name]["peak_memory"]["bytes"] / 2**20 for r in rows], "o-", label=name)
        ax2.set(ylabel="peak forward memory (MiB)")
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "memory not measured", ha="center", va="center", transform=ax2.transAxes)
    ax2.set(xticks=xs, xticklabels=labels, xlabel="resolution", title="peak memory")
    a = result["models"]
    fig.suptitle(
        f"{a['hybrid']['arch']} vs {a['teacher']['arch']} ({result['options']['device']}, "
        f"{result['options']['dtype']}, {run_mode(result['options'])})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: str | Path, *, stem: str = "bench") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write_json(paths["json"], result)
    atomic_write_text(paths["md"], markdown_table(result))
    plot(result, paths["png"])
    return paths


def suite_table(result: dict[str, Any]) -> str:
    """The device suite's table (`benchmarks/gpu_suite.py`): one row per model, resolution and mode, with the cost
    model's predicted speedup where it gave one; then what was skipped and what failed."""
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['torch_threads']} threads)"
    lines = [
        f"{where}, torch {m['torch']}, {result['dtype']}; latency batch 1 (median ms of interleaved repeats), "
        "throughput at the row's batch; peak = forward memory above the weights",
        "",
        "| model | resolution | mode | SDPA | teacher ms | hybrid ms | speedup | ideal | meas/ideal | predicted "
        "| batch | teacher img/s | hybrid img/s | tput ratio | teacher MiB | hybrid MiB | mem ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(v: float | None, fmt: str, unit: str = "") -> str:
        return format(v, fmt) + unit if v is not None else "-"

    for r in result["rows"]:
        t, h, s = r["teacher"], r["hybrid"], r["speedup"]
        pred = (r.get("prediction") or {}).get("speedup")
        mib = [x["peak_memory"]["bytes"] / 2**20 if "peak_memory" in x else None for x in (t, h)]
        tp = [x["throughput"]["images_per_s"] for x in (t, h)]
        lines.append(
            f"| {r['model']} | {r['res'][0]}x{r['res'][1]} | {r['mode']} | {sdpa_label(r)} "
            f"| {t['latency_ms']['median']:.2f} | {h['latency_ms']['median']:.2f} | {s['measured']:.2f}x "
            f"| {num(s['ideal'], '.2f', 'x')} | {num(s['fraction_of_ideal'], '.0%')} | {num(pred, '.2f', 'x')} "
            f"| {t['throughput']['batch']} | {tp[0]:.3g} | {tp[1]:.3g} "
            f"| {num(r.get('throughput_ratio'), '.2f', 'x')} | {num(mib[0], '.0f')} | {num(mib[1], '.0f')} "
            f"| {num(r.get('memory_ratio'), '.2f')} |"
        )
    for key, label in (("skipped", "skipped"), ("errors", "error")):
        for e in result.get(key, []):
            res = "x".join(map(str, e["res"]))
            lines.append(f"{label}: {e['model']} {res} {e['mode']}: {e['reason']}")
    return "\n".join(lines) + "\n"
