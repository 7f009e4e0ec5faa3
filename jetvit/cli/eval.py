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
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jetvit.cli.common import class_spread_limit, limit, load_source
from jetvit.tasks.config import (
    DA2K_ANNOTATIONS,
    DEPTH_SCALE,
    DEPTH_SHORT_SIDE,
    DET_MAX_SIDE,
    DET_SHORT_SIDE,
    MAX_DEPTH,
    MIN_DEPTH,
)

TASKS = ("seg", "depth", "cls", "video", "det")
PROBE_TASKS = ("seg", "cls", "video")  # scored with a probe from `jetvit probe` (--head)
DATASETS = {
    "seg": ("cityscapes", "ade20k", "folder"),
    "depth": ("folder", "da2k"),
    "cls": ("folder",),
    "video": ("folder",),
    "det": ("coco",),
}
DEFAULT_DATASET = {"seg": "folder", "depth": "folder", "cls": "folder", "video": "folder", "det": "coco"}
# What each metric kind reports: (result key, row label, scale for display).
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
        "--short-side",
        type=int,
        default=None,
        help=f"inference short side (seg, cls: the probe's; depth {DEPTH_SHORT_SIDE}; det {DET_SHORT_SIDE})",
    )
    p.add_argument("--max-side", type=int, default=None, help=f"det: longest inference side (default {DET_MAX_SIDE})")
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
    p.add_argument(
        "--depth-scale", type=float, default=None, help=f"depth: 16-bit PNG value per metre (default {DEPTH_SCALE:g})"
    )
    p.add_argument(
        "--align",
        choices=("auto", "disparity", "depth", "none"),
        default="auto",
        help="depth: scale-shift fit (auto: disparity for relative heads, none for metric)",
    )
    p.add_argument("--min-depth", type=float, default=None, help=f"depth: ground truth from (default {MIN_DEPTH:g})")
    p.add_argument("--max-depth", type=float, default=None, help=f"depth: ground truth up to (default {MAX_DEPTH:g})")
    p.add_argument(
        "--annotations",
        default=None,
        help=f"da2k: annotation file, relative to --data (default {DA2K_ANNOTATIONS})",
    )
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
    evaluation, heads = _evaluation(args, models)
    for name, model in models.items():
        evaluation.check(model, name)
    full = evaluation.dataset
    pick = class_spread_limit if args.task in ("cls", "video") else limit
    evaluation = evaluation.on(pick(full, args.max_images, option="--max-images"))
    draw = _drawer(args, evaluation, full, heads)

    results, kept = {}, {}
    for name, model in models.items():
        kept[name] = {}
        collect = _collect(kept[name], args.figures) if draw is not None else None
        evaluate = evaluation.with_head(heads[name])
        results[name] = evaluate(model, progress=not args.no_progress, on_prediction=collect)
    figures = []
    for i in sorted(kept["student"]):
        image, target, _ = kept["student"][i]
        predictions = {f"{name} ({getattr(models[name], 'arch', '')})": kept[name][i][2] for name in kept}
        path = out / "figures" / f"{i:03d}.png"
        draw(path, image, target, predictions)
        figures.append(str(path))

    kind = evaluation.kind
    print(format_table(kind, results, f"{kind} on {args.dataset}"))
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


def _evaluation(args: argparse.Namespace, models: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The task's evaluation (`jetvit.tasks.evaluate`) from the options, and the head each model is scored with: the
    probe of --head, or each model's own DPT / YOLOS heads, else the teacher's."""
    from jetvit.tasks import evaluate

    if args.task in PROBE_TASKS:
        if args.head is None:
            probe = f"jetvit probe --task {args.task}"
            raise ValueError(f"--task {args.task} needs --head: a probe trained on the teacher with `{probe}`")
        evaluation = _probe_evaluation(args)
        return evaluation, dict.fromkeys(models, evaluation.head)
    if args.head is not None:
        raise ValueError(
            f"--head is for --task {', '.join(PROBE_TASKS)}; --task {args.task} uses the heads the models (or the "
            "teacher) carry"
        )
    if args.task == "det":
        heads = evaluate.carried_heads(models, "detection_head", "detection")
        evaluation = evaluate.detection_evaluation(
            heads["student"],
            data=args.data,
            split=args.split,
            short_side=args.short_side,
            max_side=args.max_side,
            label_map=args.label_map,
        )
        return evaluation, heads
    heads = evaluate.carried_heads(models, "depth_head", "depth")
    evaluation = evaluate.depth_evaluation(
        heads["student"],
        data=args.data,
        dataset=args.dataset,
        short_side=args.short_side,
        depth_scale=args.depth_scale,
        annotations=args.annotations,
        align=None if args.align == "auto" else args.align,
        min_depth=args.min_depth,
        max_depth=args.max_depth,
    )
    return evaluation, heads


def _probe_evaluation(args: argparse.Namespace) -> Any:
    """seg, cls, video: the evaluation of the probe at --head, its options those of the recipe it was trained with
    unless given."""
    from jetvit.tasks.config import FRAMES, ClsProbeConfig, ProbeConfig
    from jetvit.tasks.evaluate import ClassificationEval, SegmentationEval

    if args.task == "seg":
        from jetvit.tasks.datasets import build_segmentation_dataset
        from jetvit.tasks.segmentation import load_probe

        head, meta = load_probe(args.head)
        recipe = ProbeConfig.from_dict(meta.get("probe", {}))
        data = build_segmentation_dataset(args.dataset, args.data, split=args.split, num_classes=args.num_classes)
        return SegmentationEval.from_probe(
            head, data, recipe, short_side=args.short_side, crop=args.crop, stride=args.stride
        )
    from jetvit.tasks.classification import load_cls_probe
    from jetvit.tasks.datasets import build_classification_dataset

    head, meta = load_cls_probe(args.head)
    recipe = ClsProbeConfig.from_dict(meta.get("probe", {}))
    video = args.task == "video"
    frames = args.frames or meta.get("frames", FRAMES)
    data = build_classification_dataset(args.data, split=args.split, clips=video, frames=frames)
    return ClassificationEval.from_probe(head, data, recipe, short_side=args.short_side, crop=args.crop, clips=video)


def _collect(store: dict[int, Any], n: int):
    """An on_prediction callback that keeps the first n (inputs, prediction) tuples."""

    def keep(i: int, *items: Any) -> None:
        if i < n:
            store[i] = items

    return keep


# A figure: draw(path, image (3, H, W), target, {title: prediction}) saves the image, its ground truth and each
# model's prediction side by side.
Drawer = Callable[[Path, Any, Any, dict[str, Any]], None]


def _drawer(args: argparse.Namespace, evaluation: Any, full: Any, heads: dict[str, Any]) -> Drawer | None:
    """How the figures of this evaluation are drawn; None for classification, which has none."""
    if evaluation.kind == "seg":
        return functools.partial(_draw_seg, num_classes=evaluation.head.cfg.num_classes)
    if evaluation.kind == "det":
        return functools.partial(_draw_det, categories=full.categories, min_score=args.min_score)
    if evaluation.kind in ("depth", "da2k"):
        relative = not heads["student"].cfg.metric
        return functools.partial(_draw_depth, depth_maps=evaluation.kind == "depth", relative=relative)
    return None


def _draw_seg(path: Path, image: Any, target: Any, predictions: dict[str, Any], *, num_classes: int) -> None:
    from jetvit.tasks.visualize import colour_mask, image_rgb, save_panels

    panels = [("image", image_rgb(image)), ("ground truth", colour_mask(target, num_classes))]
    panels += [(title, colour_mask(pred, num_classes)) for title, pred in predictions.items()]
    save_panels(path, panels)


def _draw_det(
    path: Path, image: Any, target: Any, predictions: dict[str, Any], *, categories: dict[int, str], min_score: float
) -> None:
    from jetvit.tasks.visualize import image_rgb, save_box_panels

    def panel(title: str, boxes: Any, cats: Any, scores: Any = None) -> tuple:
        names = [categories[int(c)] for c in cats]
        captions = names if scores is None else [f"{n} {s:.2f}" for n, s in zip(names, scores.tolist())]
        return title, boxes.tolist(), [int(c) for c in cats], captions

    panels = [panel("ground truth", target["boxes"], target["category_ids"])]
    for title, pred in predictions.items():
        shown = pred["scores"] >= min_score
        panels.append(panel(title, pred["boxes"][shown], pred["category_ids"][shown], pred["scores"][shown]))
    save_box_panels(path, image_rgb(image), panels, num_colours=max(categories, default=0) + 1)


def _draw_depth(
    path: Path, image: Any, target: Any, predictions: dict[str, Any], *, depth_maps: bool, relative: bool
) -> None:
    """Depth figures; with `depth_maps` the ground truth is a depth map (DA2K's is a list of pairs, not drawn)."""
    import numpy as np

    from jetvit.tasks.visualize import colour_depth, image_rgb, robust_range, save_panels

    preds = {title: pred.numpy() for title, pred in predictions.items()}
    lo, hi = robust_range(*preds.values())
    panels = [("image", image_rgb(image))]
    if depth_maps:
        # Ground truth is depth (far = large); relative predictions are disparity: show GT inverted to match.
        gt = np.asarray(target, dtype=np.float64)
        shown = np.where(gt > 0, 1.0 / np.maximum(gt, 1e-12), 0.0) if relative else gt
        gt_lo, gt_hi = robust_range(shown)
        label = "ground truth (1/depth)" if relative else "ground truth"
        panels.append((label, colour_depth(shown, vmin=gt_lo, vmax=gt_hi, zero_is_invalid=True)))
    panels += [(title, colour_depth(pred, vmin=lo, vmax=hi)) for title, pred in preds.items()]
    save_panels(path, panels)
