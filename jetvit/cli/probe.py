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
from pathlib import Path

from jetvit.cli.common import class_spread_limit, limit, load_source

DATASETS = ("cityscapes", "ade20k", "folder")
DEFAULT_SPLITS = {"cityscapes": ("train", "val"), "ade20k": ("training", "validation"), "folder": ("train", "val")}
# `ProbeConfig` fields set by the option of the same name; an option not given keeps the field's default.
PROBE_OPTIONS = {
    "iterations": int,
    "batch_size": int,
    "crop": int,
    "lr": float,
    "weight_decay": float,
    "warmup": int,
    "layer": int,
    "eval_short_side": int,
    "eval_crop": int,
    "eval_stride": int,
    "num_workers": int,
    "seed": int,
}
# `ClsProbeConfig` fields of `--task cls`, set the same way; options in only one of the two tables are refused by the
# other task.
CLS_PROBE_OPTIONS = {
    "iterations": int,
    "batch_size": int,
    "crop": int,
    "optimizer": str,
    "lr": float,
    "momentum": float,
    "weight_decay": float,
    "warmup": int,
    "n_last_blocks": int,
    "avgpool": bool,
    "eval_short_side": int,
    "eval_crop": int,
    "eval_batch_size": int,
    "num_workers": int,
    "seed": int,
}
TASKS = ("seg", "cls", "video")
PROBE_HELP = {
    "crop": "training crop side (a patch multiple)",
    "layer": "seg: block whose normed features the probe reads",
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
    for name, kind in {**PROBE_OPTIONS, **CLS_PROBE_OPTIONS}.items():
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=PROBE_HELP.get(name))
        else:
            p.add_argument(flag, type=kind, default=None, help=PROBE_HELP.get(name))
    p.add_argument("--frames", type=int, default=None, help="video: frames per clip, evenly spaced (default 8)")
    p.add_argument(
        "--max-val-images",
        type=int,
        default=None,
        help="evaluate on the first N validation images (cls: N drawn with a fixed seed)",
    )
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _probe_options(args: argparse.Namespace, options: dict[str, type], others: dict[str, type]) -> dict:
    """The given probe options of this task; one that only the other task reads is an error, not silently dropped."""
    foreign = [k for k in others if k not in options and getattr(args, k) is not None]
    if foreign:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in foreign)
        raise ValueError(f"{flags} not used by --task {args.task}")
    return {k: getattr(args, k) for k in options if getattr(args, k) is not None}


def run(args: argparse.Namespace) -> int:
    if args.frames is not None and args.task != "video":
        raise ValueError(f"--frames is for --task video, not --task {args.task}")
    if args.task in ("cls", "video"):
        return _run_cls(args)
    return _run_seg(args)


def _run_seg(args: argparse.Namespace) -> int:
    from jetvit.heads import LinearSegHead
    from jetvit.io import atomic_write_json
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.segmentation import ProbeConfig, evaluate_segmentation, save_probe, train_probe

    cfg = ProbeConfig(**_probe_options(args, PROBE_OPTIONS, CLS_PROBE_OPTIONS))
    train_split, val_split = DEFAULT_SPLITS[args.dataset]
    train_data = build_segmentation_dataset(
        args.dataset, args.data, split=args.train_split or train_split, num_classes=args.num_classes
    )
    val_data = build_segmentation_dataset(
        args.dataset, args.data, split=args.val_split or val_split, num_classes=args.num_classes
    )
    model = load_source(args.teacher, device=args.device)
    out = Path(args.out)
    progress = not args.no_progress

    start = time.perf_counter()
    head: LinearSegHead = train_probe(model, train_data, cfg, num_classes=train_data.num_classes, progress=progress)
    train_seconds = time.perf_counter() - start
    val_data = limit(val_data, args.max_val_images, option="--max-val-images")
    result = evaluate_segmentation(
        model,
        head,
        val_data,
        short_side=cfg.eval_short_side,
        crop=cfg.eval_crop,
        stride=cfg.eval_stride,
        layer=cfg.layer,
        progress=progress,
    )
    meta = {
        "teacher": str(args.teacher),
        "arch": getattr(model, "arch", None),
        "dataset": args.dataset,
        "data": os.path.abspath(args.data),
        "class_names": list(train_data.class_names) if train_data.class_names else None,
        "probe": dataclasses.asdict(cfg),
        "miou": result["miou"],
    }
    save_probe(head, out, meta=meta)
    atomic_write_json(out / "results.json", {**meta, "train_seconds": train_seconds, "val": result})
    print(
        f"probe on {args.teacher} ({args.dataset}): mIoU {100 * result['miou']:.2f}  pixel acc "
        f"{100 * result['pixel_acc']:.2f}  ({len(val_data)} val images, "
        f"{train_seconds:.0f}s training)"
    )
    print(f"wrote {out / 'head.safetensors'}, {out / 'head.json'}, {out / 'results.json'}")
    return 0


def _run_cls(args: argparse.Namespace) -> int:
    """`--task cls` on an image folder, `--task video` on a folder of clips."""
    from jetvit.io import atomic_write_json
    from jetvit.tasks.classification import ClsProbeConfig, evaluate_classification, save_cls_probe, train_cls_probe
    from jetvit.tasks.datasets import ImageFolderClassification, VideoFolderClassification

    video = args.task == "video"
    if args.dataset != "folder":
        layout = "video folder" if video else "image folder"
        raise ValueError(f"--task {args.task} reads an {layout} (--dataset folder), got --dataset {args.dataset}")
    cfg = ClsProbeConfig(**_probe_options(args, CLS_PROBE_OPTIONS, PROBE_OPTIONS))
    frames = args.frames or 8
    if video:
        train_data = VideoFolderClassification(args.data, split=args.train_split or "train", frames=frames)
        val_data = VideoFolderClassification(args.data, split=args.val_split or "val", frames=frames)
    else:
        train_data = ImageFolderClassification(args.data, split=args.train_split or "train")
        val_data = ImageFolderClassification(args.data, split=args.val_split or "val")
    if val_data.class_names != train_data.class_names:
        raise ValueError(
            f"the val classes {val_data.class_names} differ from the train classes {train_data.class_names}"
        )
    if args.num_classes is not None and args.num_classes != train_data.num_classes:
        raise ValueError(f"--num-classes {args.num_classes}, but {args.data} has {train_data.num_classes} classes")
    model = load_source(args.teacher, device=args.device)
    out = Path(args.out)
    progress = not args.no_progress

    start = time.perf_counter()
    head = train_cls_probe(model, train_data, cfg, num_classes=train_data.num_classes, clips=video, progress=progress)
    train_seconds = time.perf_counter() - start
    val_data = class_spread_limit(val_data, args.max_val_images, option="--max-val-images")
    result = evaluate_classification(
        model,
        head,
        val_data,
        short_side=cfg.eval_short_side,
        crop=cfg.eval_crop,
        batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        clips=video,
        progress=progress,
    )
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
    save_cls_probe(head, out, meta=meta)
    atomic_write_json(out / "results.json", {**meta, "train_seconds": train_seconds, "val": result})
    what, unit = ("video", "clips") if video else ("classification", "images")
    print(
        f"{what} probe on {args.teacher}: top-1 {100 * result['top1']:.2f}  top-5 {100 * result['top5']:.2f}"
        f"  ({len(val_data)} val {unit}, {train_seconds:.0f}s training)"
    )
    print(f"wrote {out / 'head.safetensors'}, {out / 'head.json'}, {out / 'results.json'}")
    return 0
