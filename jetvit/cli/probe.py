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
from typing import Any

import torch

DATASETS = ("cityscapes", "ade20k", "folder")
DEFAULT_SPLITS = {"cityscapes": ("train", "val"), "ade20k": ("training", "validation"), "folder": ("train", "val")}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_source(src: str, *, device: str) -> torch.nn.Module:
    """A teacher source (HF id/dir, official checkpoint) or a `jetvit.save` directory, in eval mode on `device`."""
    from jetvit.teachers import load_teacher

    return load_teacher(src).to(device).eval()


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
    from jetvit.tasks.segmentation import ProbeConfig

    d = dataclasses.asdict(ProbeConfig())
    p.add_argument("--iterations", type=int, default=d["iterations"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--crop", type=int, default=d["crop"], help="training crop side (a patch multiple)")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--warmup", type=int, default=d["warmup"])
    p.add_argument("--layer", type=int, default=d["layer"], help="block whose normed features the probe reads")
    p.add_argument("--eval-short-side", type=int, default=d["eval_short_side"])
    p.add_argument("--eval-crop", type=int, default=d["eval_crop"])
    p.add_argument("--eval-stride", type=int, default=d["eval_stride"])
    p.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N validation images")
    p.add_argument("--num-workers", type=int, default=d["num_workers"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--device", default=default_device())
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def limit(dataset: Any, n: int | None) -> Any:
    if n is None:
        return dataset
    if n < 1:
        raise ValueError(f"--max-val-images must be >= 1, got {n}")
    return torch.utils.data.Subset(dataset, range(min(n, len(dataset))))


def run(args: argparse.Namespace) -> int:
    from jetvit.heads import LinearSegHead
    from jetvit.io import atomic_write_json
    from jetvit.tasks.datasets import build_segmentation_dataset
    from jetvit.tasks.segmentation import ProbeConfig, evaluate_segmentation, save_probe, train_probe

    cfg = ProbeConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        layer=args.layer,
        eval_short_side=args.eval_short_side,
        eval_crop=args.eval_crop,
        eval_stride=args.eval_stride,
        seed=args.seed,
        num_workers=args.num_workers,
    )
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
    result = evaluate_segmentation(
        model,
        head,
        limit(val_data, args.max_val_images),
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
        f"{100 * result['pixel_acc']:.2f}  ({len(limit(val_data, args.max_val_images))} val images, "
        f"{train_seconds:.0f}s training)"
    )
    print(f"wrote {out / 'head.safetensors'}, {out / 'head.json'}, {out / 'results.json'}")
    return 0
