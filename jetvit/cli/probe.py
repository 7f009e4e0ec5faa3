"""`jetvit probe`: train a linear segmentation probe on a teacher's frozen features and report its mIoU.

Writes into --out: `head.safetensors` + `head.json` (the head's config and what it was trained on), and
`results.json` (validation metrics and the resolved probe config).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from jetvit.cli.common import limit, load_source

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
PROBE_HELP = {
    "crop": "training crop side (a patch multiple)",
    "layer": "block whose normed features the probe reads",
}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", choices=DATASETS, default="folder", help="layout of --data (default: folder)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a folder dataset")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher source (HF id/dir, .pth) or a jetvit model directory")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="output directory for the head and results")
    p.add_argument("--train-split", default=None, help="training split (default: the dataset's train split)")
    p.add_argument("--val-split", default=None, help="validation split (default: the dataset's val split)")
    for name, kind in PROBE_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=PROBE_HELP.get(name))
    p.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N validation images")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from jetvit.heads import LinearSegHead
    from jetvit.io import atomic_write_json
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.segmentation import ProbeConfig, evaluate_segmentation, save_probe, train_probe

    cfg = ProbeConfig(**{k: getattr(args, k) for k in PROBE_OPTIONS if getattr(args, k) is not None})
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
