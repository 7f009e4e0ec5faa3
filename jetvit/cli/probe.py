"""`jetvit probe`: train a linear probe on a teacher's frozen features and report its score: `--task seg` (default)
a segmentation probe (mIoU), `--task cls` a classification probe on an image folder
(`--data ROOT` with `ROOT/train/CLASS/*.jpg`, `ROOT/val/CLASS/*`; top-1 / top-5), `--task video` the same probe on
video clips extracted to frames (UCF101-style `ROOT/train/CLASS/CLIP/*.jpg`): each clip's features are the mean of
up to `--frames` evenly spaced frames' (top-1 / top-5 per clip). `--task video` takes `--task cls`'s options.

Writes into --out: `head.safetensors` + `head.json` (the head's config and what it was trained on), and
`results.json` (validation metrics and the resolved probe config).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import typing
from pathlib import Path
from typing import Any

from jetvit.cli.common import class_spread_limit, limit, load_source
from jetvit.tasks.config import FRAMES, SPLITS, ClsProbeConfig, ProbeConfig

DATASETS = ("cityscapes", "ade20k", "folder")
TASKS = ("seg", "cls", "video")
# The recipe of each task: every field is an option of the same name (`--eval-short-side`), whose default is the
# field's; an option of the other recipe only is refused.
RECIPES = {"seg": ProbeConfig, "cls": ClsProbeConfig, "video": ClsProbeConfig}
PROBE_HELP = {
    "crop": "training crop side (a patch multiple)",
    "scale_min": "training crops: smallest scale (seg) or area fraction (cls)",
    "scale_max": "training crops: largest scale (seg) or area fraction (cls)",
    "layer": "seg: block whose normed features the probe reads",
    "dropout": "seg: dropout before the head",
    "eval_short_side": "evaluation: images resized to this short side",
    "eval_crop": "evaluation: sliding-window side (seg) or centre crop (cls)",
    "eval_stride": "seg: sliding-window stride",
    "optimizer": "cls: sgd (DINO) or adamw",
    "momentum": "cls: SGD momentum",
    "n_last_blocks": "cls: concatenate the CLS tokens of this many last blocks (DINO: 4 for ViT-S, 1 for ViT-B)",
    "avgpool": "cls: append the last block's mean patch token (DINO: ViT-B)",
    "eval_batch_size": "cls: evaluation batch size",
}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", choices=DATASETS, default="folder", help="layout of --data (default: folder)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a folder dataset")


def _recipe_fields() -> dict[str, tuple[type, dict[str, Any]]]:
    """Every field of the probe recipes: its type and its default in each recipe that has it ({"seg": 512, ...})."""
    fields: dict[str, tuple[type, dict[str, Any]]] = {}
    for task in ("seg", "cls"):
        hints = typing.get_type_hints(RECIPES[task])
        for f in dataclasses.fields(RECIPES[task]):
            fields.setdefault(f.name, (hints[f.name], {}))[1][task] = f.default
    return fields


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        choices=TASKS,
        default="seg",
        help="seg: segmentation probe; cls: classification probe; video: classification of clips of frames",
    )
    p.add_argument("--teacher", required=True, help="teacher source (HF id/dir, .pth) or a jetvit model directory")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="output directory for the head and results")
    p.add_argument("--train-split", default=None, help="training split (default: the dataset's train split)")
    p.add_argument("--val-split", default=None, help="validation split (default: the dataset's val split)")
    g = p.add_argument_group("probe recipe (ProbeConfig for seg, ClsProbeConfig for cls and video)")
    for name, (kind, defaults) in _recipe_fields().items():
        flag = f"--{name.replace('_', '-')}"
        values = set(map(str, defaults.values()))
        shown = values.pop() if len(values) == 1 else ", ".join(f"{task} {v}" for task, v in defaults.items())
        text = f"{PROBE_HELP[name]} " if name in PROBE_HELP else ""
        if kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"{text}(default: {shown})")
        else:
            g.add_argument(flag, type=kind, default=None, help=f"{text}(default: {shown})")
    p.add_argument("--frames", type=int, default=None, help=f"video: frames per clip, evenly spaced (default {FRAMES})")
    p.add_argument(
        "--max-val-images",
        type=int,
        default=None,
        help="evaluate on the first N validation images (cls: N drawn with a fixed seed)",
    )
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def recipe(args: argparse.Namespace) -> ProbeConfig | ClsProbeConfig:
    """The recipe of --task from the options given (the others keep the field's default); an option that only the
    other recipe reads is an error, not silently dropped."""
    recipe_type = RECIPES[args.task]
    own = {f.name for f in dataclasses.fields(recipe_type)}
    foreign = [name for name in _recipe_fields() if name not in own and getattr(args, name) is not None]
    if foreign:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in foreign)
        raise ValueError(f"{flags} not used by --task {args.task}")
    return recipe_type(**{name: getattr(args, name) for name in own if getattr(args, name) is not None})


def run(args: argparse.Namespace) -> int:
    if args.frames is not None and args.task != "video":
        raise ValueError(f"--frames is for --task video, not --task {args.task}")
    cfg = recipe(args)
    if args.task in ("cls", "video"):
        return _run_cls(args, cfg)
    return _run_seg(args, cfg)


def _run_seg(args: argparse.Namespace, cfg: ProbeConfig) -> int:
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.evaluate import SegmentationEval
    from jetvit.tasks.segmentation import save_probe, train_probe

    train_split, val_split = SPLITS[args.dataset]
    train_data = build_segmentation_dataset(
        args.dataset, args.data, split=args.train_split or train_split, num_classes=args.num_classes
    )
    val_data = build_segmentation_dataset(
        args.dataset, args.data, split=args.val_split or val_split, num_classes=args.num_classes
    )
    model = load_source(args.teacher, device=args.device)
    start = time.perf_counter()
    head = train_probe(model, train_data, cfg, num_classes=train_data.num_classes, progress=not args.no_progress)
    train_seconds = time.perf_counter() - start
    evaluation = SegmentationEval.from_probe(head, limit(val_data, args.max_val_images, option="--max-val-images"), cfg)
    result = evaluation(model, progress=not args.no_progress)
    meta = {
        "teacher": str(args.teacher),
        "arch": getattr(model, "arch", None),
        "dataset": args.dataset,
        "data": os.path.abspath(args.data),
        "class_names": list(train_data.class_names) if train_data.class_names else None,
        "probe": dataclasses.asdict(cfg),
        "miou": result["miou"],
    }
    save_probe(head, args.out, meta=meta)
    scores = f"mIoU {100 * result['miou']:.2f}  pixel acc {100 * result['pixel_acc']:.2f}"
    line = f"probe on {args.teacher} ({args.dataset}): {scores}  ({len(evaluation.dataset)} val images"
    return _report(args, meta, result, train_seconds, line)


def _run_cls(args: argparse.Namespace, cfg: ClsProbeConfig) -> int:
    """`--task cls` on an image folder, `--task video` on a folder of clips."""
    from jetvit.tasks.classification import save_cls_probe, train_cls_probe
    from jetvit.tasks.datasets import build_classification_dataset
    from jetvit.tasks.evaluate import ClassificationEval

    video = args.task == "video"
    if args.dataset != "folder":
        layout = "video folder" if video else "image folder"
        raise ValueError(f"--task {args.task} reads an {layout} (--dataset folder), got --dataset {args.dataset}")
    train_split, val_split = SPLITS["folder"]
    frames = args.frames or FRAMES
    train_data = build_classification_dataset(
        args.data, split=args.train_split or train_split, clips=video, frames=frames
    )
    val_data = build_classification_dataset(args.data, split=args.val_split or val_split, clips=video, frames=frames)
    if val_data.class_names != train_data.class_names:
        raise ValueError(
            f"the val classes {val_data.class_names} differ from the train classes {train_data.class_names}"
        )
    if args.num_classes is not None and args.num_classes != train_data.num_classes:
        raise ValueError(f"--num-classes {args.num_classes}, but {args.data} has {train_data.num_classes} classes")
    model = load_source(args.teacher, device=args.device)
    progress = not args.no_progress
    start = time.perf_counter()
    head = train_cls_probe(model, train_data, cfg, num_classes=train_data.num_classes, clips=video, progress=progress)
    train_seconds = time.perf_counter() - start
    val_data = class_spread_limit(val_data, args.max_val_images, option="--max-val-images")
    evaluation = ClassificationEval.from_probe(head, val_data, cfg, num_workers=cfg.num_workers, clips=video)
    result = evaluation(model, progress=progress)
    meta = {
        "task": args.task,
        "teacher": str(args.teacher),
        "arch": getattr(model, "arch", None),
        "dataset": "folder",
        "data": os.path.abspath(args.data),
        "class_names": list(train_data.class_names),
        "probe": dataclasses.asdict(cfg),
        **({"frames": frames} if video else {}),
        "top1": result["top1"],
    }
    save_cls_probe(head, args.out, meta=meta)
    what, unit = ("video", "clips") if video else ("classification", "images")
    scores = f"top-1 {100 * result['top1']:.2f}  top-5 {100 * result['top5']:.2f}"
    line = f"{what} probe on {args.teacher}: {scores}  ({len(evaluation.dataset)} val {unit}"
    return _report(args, meta, result, train_seconds, line)


def _report(
    args: argparse.Namespace, meta: dict[str, Any], result: dict[str, Any], train_seconds: float, line: str
) -> int:
    """Write `results.json` beside the saved probe and say what was measured (`line`, its parenthesis open) and
    written."""
    from jetvit.io import atomic_write_json

    out = Path(args.out)
    atomic_write_json(out / "results.json", {**meta, "train_seconds": train_seconds, "val": result})
    print(f"{line}, {train_seconds:.0f}s training)")
    print(f"wrote {out / 'head.safetensors'}, {out / 'head.json'}, {out / 'results.json'}")
    return 0
