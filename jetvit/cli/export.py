"""`jetvit export`: a saved hybrid as ONNX at one resolution, checked against PyTorch with onnxruntime (CPU).

    jetvit export --model runs/student --res 1024x1024 --out student.onnx

Prints the maximum absolute difference between onnxruntime and PyTorch on random images and exits non-zero when it
exceeds --atol (1e-4 by default, fp32). The graph outputs the final tokens; a YOLOS model with its detection heads
also outputs the class logits and boxes (`jetvit.export`).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="directory written by jetvit.save (config.json + weights)")
    p.add_argument("--res", required=True, help="input resolution HxW the graph is fixed to, e.g. 1024x1024")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnxruntime - PyTorch|")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")


def run(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from jetvit.bench.harness import parse_res
    from jetvit.export import check_onnx, export_onnx, output_names
    from jetvit.io import CONFIG_NAME, WEIGHTS_NAME, load, refuse_overwrite

    needed = ("onnx", "onnxscript") + (() if args.no_check else ("onnxruntime",))
    for name in needed:  # before any work: torch's exporter reports a missing one in its own words, late
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(
                f"jetvit export needs {', '.join(needed)}; {name} is not installed: pip install jetvit[onnx]", name=name
            )
    res = parse_res(args.res)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    model_dir = Path(args.model)
    refuse_overwrite(
        args.out,
        {"--model": model_dir, "model's weights": model_dir / WEIGHTS_NAME, "model's config": model_dir / CONFIG_NAME},
        nested=False,
    )
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give the path of the .onnx file to write")
    model = load(args.model)
    model.grid_size(*res)  # a clear error for sizes that are not multiples of the patch
    path = export_onnx(model, res, args.out, batch=args.batch, opset=args.opset)
    outputs = ", ".join(output_names(model))
    print(f"wrote {path} (arch {model.arch}, input {args.batch}x3x{res[0]}x{res[1]}, outputs {outputs})")
    if args.no_check:
        return 0
    report = check_onnx(model, path, res, batch=args.batch)
    report["atol"] = args.atol
    report["ok"] = report["max_abs_error"] <= args.atol
    print(json.dumps(report))
    if not report["ok"]:
        print(f"max abs error {report['max_abs_error']:.3g} exceeds --atol {args.atol:g}")
        return 1
    return 0
