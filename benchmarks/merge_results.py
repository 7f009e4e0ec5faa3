"""Merge several `jetvit bench` results of the same pair and settings (e.g. one run per resolution) into one
JSON / markdown table / plot.

    .venv/bin/python benchmarks/merge_results.py benchmarks/results/cpu-dinov3s-eager-1024/bench.json \
        benchmarks/results/cpu-dinov3s-eager-2048/bench.json --out benchmarks/results/cpu-dinov3s-eager
"""

from __future__ import annotations

import argparse
import json
import sys

from jetvit.bench.report import write_outputs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="bench.json files")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    results = [json.loads(open(path).read()) for path in args.inputs]
    first = results[0]
    for r in results[1:]:
        if r["models"] != first["models"] or r["options"]["device"] != first["options"]["device"]:
            raise ValueError("results of different model pairs or devices cannot be merged")
    merged = dict(first)
    merged["rows"] = sorted((row for r in results for row in r["rows"]), key=lambda row: row["tokens"])
    merged["command"] = " ; ".join(r["command"] for r in results)
    merged["options"] = {
        **first["options"],
        "resolutions": [row["res"] for row in merged["rows"]],
        "repeats_per_input": [r["options"]["repeats"] for r in results],
    }
    paths = write_outputs(merged, args.out)
    print("wrote " + ", ".join(str(x) for x in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
