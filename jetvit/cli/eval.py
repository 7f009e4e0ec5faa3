"""`jetvit eval`: evaluate a hybrid (and its teacher) on segmentation, depth, classification, video classification
or detection, side by side.

seg: a linear probe (`--head`, from `jetvit probe`, trained on the teacher) is applied to each model's features.
depth: each model uses its own DPT head when it carries one (a converted Depth-Anything hybrid inherits the
teacher's), otherwise the teacher's head on its intermediates. `--dataset folder` scores AbsRel / delta1 on a depth
folder; `--dataset da2k` scores DA2K pair-ordering accuracy.
cls: a linear classification probe (`--head`, from `jetvit probe --task cls`) on each model's CLS tokens, top-1 /
top-5 on an image folder (`--data ROOT` with `ROOT/{split}/CLASS/*`); no figures.
video: the same probe (`jetvit probe --task video`) on clips extracted to frames (`ROOT/{split}/CLASS/CLIP/*`), each
clip's features the mean of up to `--frames` evenly spaced frames' (default: the probe's); top-1 / top-5 per clip.
det: COCO box AP (pycocotools: `pip install jetvit[det]`) with the YOLOS class and box heads each model carries (a
converted YOLOS hybrid inherits the teacher's), otherwise the teacher's heads on its detection tokens, on a COCO-format
set (`--data ROOT` with `ROOT/annotations/instances_{split}.json` and `ROOT/{split}/`, split default val2017). Images
are resized as YOLOS evaluates (short side `--short-side` 800, long side at most `--max-side` 1333); labels map to
the dataset's categories by the model's label names, else label index == category id (COCO's YOLOS checkpoints), or
by `--label-map FILE` (`jetvit.tasks.detection`). The figures draw the ground truth and each model's detections
scoring at least `--min-score`.

Writes into --out: `results.json` (every metric of every model) and `figures/NNN.png` (image, ground truth, teacher
and student predictions next to each other).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from jetvit.cli.common import class_spread_limit, limit, load_source

TASKS = ("seg", "depth", "cls", "video", "det")
DATASETS = {
    "seg": ("cityscapes", "ade20k", "folder"),
    "depth": ("folder", "da2k"),
    "cls": ("folder",),
    "video": ("folder",),
    "det": ("coco",),
}
DEFAULT_DATASET = {"seg": "folder", "depth": "folder", "cls": "folder", "video": "folder", "det": "coco"}
DEFAULT_SPLIT = {"cityscapes": "val", "ade20k": "validation", "folder": "val", "coco": "val2017"}
# What each task reports: (result key, row label, scale for display).
ROWS = {
    "seg": [("miou", "mIoU (%)", 100.0), ("pixel_acc", "pixel acc (%)", 100.0), ("seconds", "seconds", 1.0)],
    "depth": [("abs_rel", "AbsRel", 1.0), ("delta1", "delta1 (%)", 100.0), ("seconds", "seconds", 1.0)],
    "da2k": [("accuracy", "DA2K acc (%)", 100.0), ("seconds", "seconds", 1.0)],
    "cls": [("top1", "top-1 (%)", 100.0), ("top5", "top-5 (%)", 100.0), ("seconds", "seconds", 1.0)],
    "video": [("top1", "clip top-1 (%)", 100.0), ("top5", "clip top-5 (%)", 100.0), ("seconds", "seconds", 1.0)],
    "det": [
        ("map", "mAP .50:.95 (%)", 100.0),
        ("ap50", "AP50 (%)", 100.0),
        ("ap75", "AP75 (%)", 100.0),
        ("ap_small", "AP small (%)", 100.0),
        ("ap_medium", "AP medium (%)", 100.0),
        ("ap_large", "AP large (%)", 100.0),
        ("ar100", "AR@100 (%)", 100.0),
        ("seconds", "seconds", 1.0),
    ],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the hybrid: a jetvit model directory (or any teacher source)")
    p.add_argument("--teacher", default=None, help="teacher source to evaluate alongside (HF id/dir, .pth, jetvit dir)")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument(
        "--dataset",
        default=None,
        help="seg: cityscapes|ade20k|folder; depth: folder|da2k; cls, video: folder; det: coco (default: folder, coco)",
    )
    p.add_argument("--out", required=True, help="output directory for results.json and figures/")
    p.add_argument(
        "--head", default=None, help="seg, cls, video: probe directory or head.safetensors written by `jetvit probe`"
    )
    p.add_argument(
        "--split", default=None, help="split to evaluate (default: the dataset's validation split; det: val2017)"
    )
    p.add_argument("--num-classes", type=int, default=None, help="seg: classes of a folder dataset")
    p.add_argument(
        "--short-side", type=int, default=None, help="inference short side (seg, cls: the probe's; depth 518; det 800)"
    )
    p.add_argument("--max-side", type=int, default=None, help="det: longest inference side (default 1333)")
    p.add_argument("--label-map", default=None, help="det: JSON file {label index: COCO category id}")
    p.add_argument(
        "--min-score", type=float, default=0.5, help="det: detections drawn in the figures score at least this"
    )
    p.add_argument("--frames", type=int, default=None, help="video: frames per clip (default: the probe's)")
    p.add_argument(
        "--crop",
        type=int,
        default=None,
        help="seg: sliding-window crop; cls, video: centre crop (default: the probe's)",
    )
    p.add_argument("--stride", type=int, default=None, help="seg: sliding-window stride (default: the probe's)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="depth: 16-bit PNG value per metre")
    p.add_argument(
        "--align",
        choices=("auto", "disparity", "depth", "none"),
        default="auto",
        help="depth: scale-shift fit (auto: disparity for relative heads, none for metric)",
    )
    p.add_argument("--min-depth", type=float, default=1e-3)
    p.add_argument("--max-depth", type=float, default=math.inf)
    p.add_argument("--annotations", default="annotations.json", help="da2k: annotation file (relative to --data)")
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="evaluate on the first N images (cls, video: N drawn with a fixed seed)",
    )
    p.add_argument("--figures", type=int, default=4, help="number of side-by-side figures to save")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def format_table(kind: str, results: dict[str, dict[str, Any]], title: str) -> str:
    """One row per metric, one column per model (teacher first), plus student - teacher when both are there."""
    names = list(results)
    both = names == ["teacher", "student"]
    header = f"{title:<28}" + "".join(f"{n:>12}" for n in names) + (f"{'diff':>12}" if both else "")
    lines = [header, "-" * len(header)]
    for key, label, scale in ROWS[kind]:
        vals = [results[n].get(key, math.nan) * scale for n in names]
        row = f"{label:<28}" + "".join(f"{v:>12.2f}" if key != "abs_rel" else f"{v:>12.4f}" for v in vals)
        if both:
            d = vals[1] - vals[0]
            row += f"{d:>+12.4f}" if key == "abs_rel" else f"{d:>+12.2f}"
        lines.append(row)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from jetvit.io import atomic_write_json

    args.dataset = args.dataset or DEFAULT_DATASET[args.task]
    if args.dataset not in DATASETS[args.task]:
        raise ValueError(f"--dataset {args.dataset!r} does not fit --task {args.task}; accepted: {DATASETS[args.task]}")
    if args.figures < 0:
        raise ValueError(f"--figures must be >= 0, got {args.figures}")
    used_by = {"max_side": "det", "label_map": "det", "frames": "video"}
    for option, task in used_by.items():
        if getattr(args, option) is not None and args.task != task:
            raise ValueError(f"--{option.replace('_', '-')} is for --task {task}, not --task {args.task}")
    if args.task == "det":
        from jetvit.tasks.metrics import import_pycocotools

        import_pycocotools()  # before any model is loaded
    out = Path(args.out)
    models = {}
    if args.teacher is not None:
        models["teacher"] = load_source(args.teacher, device=args.device)
    models["student"] = load_source(args.model, device=args.device)
    if args.task == "seg":
        kind, results, figures = _eval_seg(args, models, out)
    elif args.task in ("cls", "video"):
        kind, results, figures = _eval_cls(args, models)
    elif args.task == "det":
        kind, results, figures = _eval_det(args, models, out)
    else:
        kind, results, figures = _eval_depth(args, models, out)

    title = f"{kind} on {args.dataset}"
    print(format_table(kind, results, title))
    report = {
        "task": args.task,
        "metric_kind": kind,
        "model": str(args.model),
        "teacher": None if args.teacher is None else str(args.teacher),
        "archs": {name: getattr(m, "arch", None) for name, m in models.items()},
        "dataset": args.dataset,
        "data": os.path.abspath(args.data),
        "results": results,
        "figures": figures,
    }
    atomic_write_json(out / "results.json", report)
    print(f"wrote {out / 'results.json'} and {len(figures)} figures in {out / 'figures'}")
    return 0


def _collect(store: dict[int, Any], n: int):
    """An on_prediction callback that keeps the first n (inputs, prediction) tuples."""

    def keep(i: int, *items: Any) -> None:
        if i < n:
            store[i] = items

    return keep


def _eval_seg(args: argparse.Namespace, models: dict[str, Any], out: Path) -> tuple[str, dict, list[str]]:
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.segmentation import evaluate_segmentation, load_probe
    from jetvit.tasks.visualize import colour_mask, image_rgb, save_panels

    if args.head is None:
        raise ValueError("--task seg needs --head: a probe trained on the teacher with `jetvit probe`")
    head, meta = load_probe(args.head)
    probe = meta.get("probe", {})
    for name, m in models.items():
        if m.cfg.dim != head.cfg.in_dim:
            raise ValueError(f"the head reads {head.cfg.in_dim}-dim features but the {name} has width {m.cfg.dim}")
    data = build_segmentation_dataset(
        args.dataset, args.data, split=args.split or DEFAULT_SPLIT[args.dataset], num_classes=args.num_classes
    )
    if data.num_classes != head.cfg.num_classes:
        raise ValueError(f"the head predicts {head.cfg.num_classes} classes, the dataset has {data.num_classes}")
    data = limit(data, args.max_images, option="--max-images")
    options = {
        "short_side": args.short_side or probe.get("eval_short_side", 512),
        "crop": args.crop or probe.get("eval_crop", 512),
        "stride": args.stride or probe.get("eval_stride", 341),
        "layer": probe.get("layer", -1),
    }
    results, kept = {}, {}
    for name, model in models.items():
        kept[name] = {}
        head.to(next(model.parameters()).device)
        collect = _collect(kept[name], args.figures)
        results[name] = evaluate_segmentation(
            model, head, data, progress=not args.no_progress, on_prediction=collect, **options
        )
    figures = []
    n = head.cfg.num_classes
    for i in sorted(kept["student"]):
        image, label, _ = kept["student"][i]
        panels = [("image", image_rgb(image)), ("ground truth", colour_mask(label, n))]
        panels += [(f"{name} ({getattr(models[name], 'arch', '')})", colour_mask(kept[name][i][2], n)) for name in kept]
        path = out / "figures" / f"{i:03d}.png"
        save_panels(path, panels)
        figures.append(str(path))
    return "seg", results, figures


def _eval_cls(args: argparse.Namespace, models: dict[str, Any]) -> tuple[str, dict, list[str]]:
    """`--task cls` on an image folder, `--task video` on a folder of clips."""
    from jetvit.tasks.classification import evaluate_classification, load_cls_probe
    from jetvit.tasks.datasets import ImageFolderClassification, VideoFolderClassification

    video = args.task == "video"
    if args.head is None:
        raise ValueError(
            f"--task {args.task} needs --head: a probe trained on the teacher with `jetvit probe --task {args.task}`"
        )
    head, meta = load_cls_probe(args.head)
    probe = meta.get("probe", {})
    for name, m in models.items():
        if m.cfg.dim != head.cfg.in_dim:
            raise ValueError(f"the head reads {head.cfg.in_dim}-dim features but the {name} has width {m.cfg.dim}")
    if video:
        frames = args.frames or meta.get("frames", 8)
        data = VideoFolderClassification(args.data, split=args.split or "val", frames=frames)
    else:
        data = ImageFolderClassification(args.data, split=args.split or "val")
    if data.num_classes != head.cfg.num_classes:
        raise ValueError(f"the head predicts {head.cfg.num_classes} classes, {args.data} has {data.num_classes}")
    data = class_spread_limit(data, args.max_images, option="--max-images")
    options = {
        "short_side": args.short_side or probe.get("eval_short_side", 256),
        "crop": args.crop or probe.get("eval_crop", 224),
        "batch_size": probe.get("eval_batch_size", 64),
    }
    results = {}
    for name, model in models.items():
        head.to(next(model.parameters()).device)
        results[name] = evaluate_classification(
            model, head, data, clips=video, progress=not args.no_progress, **options
        )
    return args.task, results, []


def _carried_heads(models: dict[str, Any], attr: str, what: str) -> dict[str, Any]:
    """Each model's own head `attr` (a YOLOS or DPT head saved with it), else the teacher's."""
    fallback = getattr(models.get("teacher"), attr, None)
    heads = {}
    for name, model in models.items():
        own = getattr(model, attr, None)
        heads[name] = own if own is not None else fallback
        if heads[name] is None:
            raise ValueError(f"the {name} has no {what} head and no teacher with one was given (--teacher)")
    return heads


def _eval_det(args: argparse.Namespace, models: dict[str, Any], out: Path) -> tuple[str, dict, list[str]]:
    from jetvit.tasks.datasets import CocoDetection, coco_layout
    from jetvit.tasks.detection import MAX_SIDE, SHORT_SIDE, evaluate_detection, read_label_map
    from jetvit.tasks.visualize import image_rgb, save_box_panels

    if args.head is not None:
        raise ValueError(
            "--head is for seg, cls and video; detection uses the YOLOS heads the models (or the teacher) carry"
        )
    heads = _carried_heads(models, "detection_head", "detection")
    full = CocoDetection(*coco_layout(args.data, args.split or DEFAULT_SPLIT["coco"]))
    data = limit(full, args.max_images, option="--max-images")
    options = {
        "short_side": args.short_side or SHORT_SIDE,
        "max_side": args.max_side or MAX_SIDE,
        "label_map": read_label_map(args.label_map) if args.label_map else None,
    }
    results, kept = {}, {}
    for name, model in models.items():
        kept[name] = {}
        results[name] = evaluate_detection(
            model,
            data,
            head=heads[name],
            progress=not args.no_progress,
            on_prediction=_collect(kept[name], args.figures),
            **options,
        )
    figures = []
    colours = max(full.categories, default=0) + 1

    def panel(title: str, boxes: Any, cats: Any, scores: Any = None) -> tuple:
        names = [full.categories[int(c)] for c in cats]
        captions = names if scores is None else [f"{n} {s:.2f}" for n, s in zip(names, scores.tolist())]
        return title, boxes.tolist(), [int(c) for c in cats], captions

    for i in sorted(kept["student"]):
        image, target, _ = kept["student"][i]
        panels = [panel("ground truth", target["boxes"], target["category_ids"])]
        for name in kept:
            pred = kept[name][i][2]
            shown = pred["scores"] >= args.min_score
            title = f"{name} ({getattr(models[name], 'arch', '')})"
            panels.append(panel(title, pred["boxes"][shown], pred["category_ids"][shown], pred["scores"][shown]))
        path = out / "figures" / f"{i:03d}.png"
        save_box_panels(path, image_rgb(image), panels, num_colours=colours)
        figures.append(str(path))
    return "det", results, figures


def _eval_depth(args: argparse.Namespace, models: dict[str, Any], out: Path) -> tuple[str, dict, list[str]]:
    import numpy as np

    from jetvit.tasks.datasets import DA2K, DepthFolder
    from jetvit.tasks.depth import evaluate_da2k, evaluate_depth
    from jetvit.tasks.visualize import colour_depth, image_rgb, robust_range, save_panels

    if args.head is not None:
        raise ValueError("--head is for --task seg; depth uses the DPT head the models (or the teacher) carry")
    heads = _carried_heads(models, "depth_head", "depth")
    short_side = args.short_side or 518
    kept: dict[str, dict[int, Any]] = {}
    results = {}
    if args.dataset == "da2k":
        kind = "da2k"
        data = limit(DA2K(args.data, annotations=args.annotations), args.max_images, option="--max-images")
        for name, model in models.items():
            kept[name] = {}
            collect = _collect(kept[name], args.figures)
            results[name] = evaluate_da2k(
                model,
                data,
                head=heads[name],
                short_side=short_side,
                progress=not args.no_progress,
                on_prediction=collect,
            )
    else:
        kind = "depth"
        data = limit(DepthFolder(args.data, depth_scale=args.depth_scale), args.max_images, option="--max-images")
        align = None if args.align == "auto" else args.align
        for name, model in models.items():
            kept[name] = {}
            results[name] = evaluate_depth(
                model,
                data,
                head=heads[name],
                align=align,
                short_side=short_side,
                min_depth=args.min_depth,
                max_depth=args.max_depth,
                progress=not args.no_progress,
                on_prediction=_collect(kept[name], args.figures),
            )
    figures = []
    for i in sorted(kept["student"]):
        image, target, _ = kept["student"][i]
        preds = {name: kept[name][i][2].numpy() for name in kept}
        lo, hi = robust_range(*preds.values())
        panels = [("image", image_rgb(image))]
        if kind == "depth":
            # Ground truth is depth (far = large); relative predictions are disparity: show GT inverted to match.
            gt = np.asarray(target, dtype=np.float64)
            relative = not heads["student"].cfg.metric
            shown = np.where(gt > 0, 1.0 / np.maximum(gt, 1e-12), 0.0) if relative else gt
            gt_lo, gt_hi = robust_range(shown)
            label = "ground truth (1/depth)" if relative else "ground truth"
            panels.append((label, colour_depth(shown, vmin=gt_lo, vmax=gt_hi, zero_is_invalid=True)))
        for name, pred in preds.items():
            panels.append((f"{name} ({getattr(models[name], 'arch', '')})", colour_depth(pred, vmin=lo, vmax=hi)))
        path = out / "figures" / f"{i:03d}.png"
        save_panels(path, panels)
        figures.append(str(path))
    return kind, results, figures
