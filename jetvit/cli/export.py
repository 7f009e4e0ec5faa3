"""`jetvit export`: a saved hybrid as an ONNX graph for any batch and resolution, checked against PyTorch (CPU).

    jetvit export --model runs/student --res 1024x1024 --out student.onnx
    jetvit export --model runs/student --res 1024x1024 --out student_fp16.onnx --dtype fp16

The graph takes any batch and any H x W that are multiples of the patch size (`--static` fixes them to --batch and
--res). It is checked in onnxruntime (or `--runtime openvino`) against PyTorch on random images at three resolutions
(--res, about half its height, one patch wider; or `--check-res`) and two batch sizes (--batch and one more), and the
command exits non-zero when the largest difference exceeds --atol (by default 1e-4 for fp32, and 2% / 5% of the
largest output for fp16 / bf16). The graph outputs the final tokens; a YOLOS model with its detection heads also
outputs the class logits and boxes (`jetvit.export`). docs/DEPLOY.md: TensorRT and OpenVINO.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="directory written by jetvit.save (config.json + weights)")
    p.add_argument(
        "--res", required=True, help="input resolution HxW traced and checked (fixed with --static), e.g. 1024x1024"
    )
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16 (the linear attention's state stays fp32)")
    p.add_argument("--static", action="store_true", help="fix the graph's batch and size to --batch and --res")
    p.add_argument("--batch", type=int, default=1, help="batch of the check (of the graph with --static)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18; 22 for bf16)")
    p.add_argument(
        "--conv",
        default="shifted",
        help="the L blocks' per-image convolution: shifted (pointwise ops, runs in every runtime; the default) or "
        "grouped (one Conv a block: several times faster in onnxruntime; OpenVINO at fixed shapes only)",
    )
    p.add_argument("--check-res", nargs="+", help="resolutions HxW of the check (default: three around --res)")
    p.add_argument("--runtime", default="onnxruntime", help="runtime of the check: onnxruntime or openvino")
    p.add_argument("--atol", type=float, help="largest accepted |runtime - PyTorch| (default: by --dtype, above)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")


def run(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from jetvit.bench.harness import parse_res
    from jetvit.export import (
        DEFAULT_TOLERANCE,
        RUNTIMES,
        check_onnx,
        check_sizes,
        export_onnx,
        output_names,
        parse_dtype,
    )
    from jetvit.io import CONFIG_NAME, WEIGHTS_NAME, load, refuse_overwrite
    from jetvit.ops import EXPORT_CONVS

    parse_dtype(args.dtype)
    if args.conv not in EXPORT_CONVS:
        raise ValueError(f"--conv: conv {args.conv!r} is not one of {', '.join(EXPORT_CONVS)}")
    if args.runtime not in RUNTIMES:
        raise ValueError(f"--runtime {args.runtime!r} is not one of {', '.join(RUNTIMES)}")
    needed = ("onnx", "onnxscript") + (() if args.no_check else (args.runtime,))
    for name in needed:  # before any work: torch's exporter reports a missing one in its own words, late
        if importlib.util.find_spec(name) is None:
            extra = "openvino" if name == "openvino" else "onnx"
            raise ModuleNotFoundError(
                f"jetvit export needs {', '.join(needed)}; {name} is not installed: pip install jetvit[{extra}]",
                name=name,
            )
    res = parse_res(args.res)
    check_res = [parse_res(r) for r in args.check_res] if args.check_res else None
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.static and check_res and any(r != res for r in check_res):
        raise ValueError(f"--check-res {' '.join(args.check_res)} with --static: the graph takes --res {args.res} only")
    model_dir = Path(args.model)
    refuse_overwrite(
        args.out,
        {"--model": model_dir, "model's weights": model_dir / WEIGHTS_NAME, "model's config": model_dir / CONFIG_NAME},
        nested=False,
    )
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give the path of the .onnx file to write")
    model = load(args.model)
    p = model.cfg.patch_size
    for r in [res, *(check_res or [])]:
        model.grid_size(*r)  # a clear error for sizes that are not multiples of the patch
    dynamic = not args.static
    if dynamic and min(res) < 2 * p:  # too small to trace symbolically: trace at 2 patches a side, check at --res
        example = (max(res[0], 2 * p), max(res[1], 2 * p))
    else:
        example = res
    path = export_onnx(
        model,
        args.out,
        dtype=args.dtype,
        dynamic=dynamic,
        example_size=example,
        batch=args.batch,
        opset=args.opset,
        conv=args.conv,
    )
    outputs = ", ".join(output_names(model))
    shape = f"{args.batch}x3x{res[0]}x{res[1]}" if args.static else f"(B, 3, {p}*h, {p}*w) for any B, h, w"
    print(f"wrote {path} (arch {model.arch}, {args.dtype}, input {shape}, outputs {outputs})")
    if args.conv == "shifted" and "L" in model.arch:
        print("for onnxruntime or OpenVINO on a CPU, --conv grouped runs faster (docs/DEPLOY.md)")
    if args.no_check:
        return 0
    sizes = [res] if args.static else (check_res or check_sizes(res, p))
    batches = [args.batch] if args.static else [args.batch, args.batch + 1]
    report = check_onnx(model, path, sizes, batches=batches, runtime=args.runtime)
    atol = args.atol
    if atol is None:
        tolerance = DEFAULT_TOLERANCE[args.dtype]
        atol = tolerance if args.dtype == "fp32" else tolerance * report["max_abs_value"]
    report.update(runtime=args.runtime, dtype=args.dtype, atol=atol, ok=report["max_abs_error"] <= atol)
    print(json.dumps(report))
    if not report["ok"]:
        print(f"max abs error {report['max_abs_error']:.3g} exceeds --atol {atol:g}")
        return 1
    return 0
