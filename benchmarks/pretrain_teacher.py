"""Pretrain the built-in teacher (`make teacher`) and its all-window control.

    python benchmarks/pretrain_teacher.py                      # teacher -> jetvit/assets/teacher, control -> runs/
    python benchmarks/pretrain_teacher.py --arch WWWWWWWW --out runs/teacher-W --no-control
    python benchmarks/pretrain_teacher.py --set steps=20 --set val_samples=16 --out /tmp/t   # a tiny run

The control trains the same architecture with only `W` blocks, the same way, and its scores are recorded in the
teacher's `teacher.json` under "control": the task must need global context, so the control must score clearly lower.
`--control-from DIR` records an already trained control instead of training one; `--rescore` recomputes the recorded
scores of already trained models (e.g. after a change of the evaluation code) without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import yaml

from jetvit.demo.teacher import ASSET_DIR, TEACHER_JSON, TeacherRecipe, train_teacher
from jetvit.io import atomic_write_json


def parse_recipe(overrides: list[str], arch: str | None) -> TeacherRecipe:
    fields = {f.name: f for f in dataclasses.fields(TeacherRecipe)}
    values = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not key=value")
        key, text = item.split("=", 1)
        if key not in fields:
            raise ValueError(f"unknown recipe key {key!r}; accepted: {', '.join(fields)}")
        values[key] = yaml.safe_load(text)
    if arch is not None:
        values["arch"] = arch
    return TeacherRecipe(**values)


def control_summary(record: dict) -> dict:
    return {"arch": record["arch"], "val": record["val"], "train_seconds": record["train_seconds"]}


def rescore(directory: Path) -> dict:
    """Recompute the validation scores of a trained teacher with the current evaluation code; rewrite its record."""
    from jetvit.demo.teacher import final_scores, load_builtin

    model, seg_head, depth_head, record = load_builtin(directory)
    record["val"] = final_scores(model, seg_head, depth_head, samples=record["val"]["samples"],
                                 seed=record["recipe"]["data_seed"])  # fmt: skip
    atomic_write_json(directory / TEACHER_JSON, record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ASSET_DIR), help="where the teacher goes (default: the committed asset)")
    p.add_argument("--arch", default=None, help="architecture string (default: all F, the teacher)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TeacherRecipe field")
    p.add_argument("--control-out", default="runs/teacher-control-W", help="where the all-W control goes")
    p.add_argument("--no-control", action="store_true", help="do not train the all-W control")
    p.add_argument("--control-from", default=None, help="record this already trained control instead")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="do not train: recompute the recorded scores of --out (and --control-from)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    recipe = parse_recipe(args.set, args.arch)
    if args.rescore:
        record = rescore(Path(args.out))
    else:
        record = train_teacher(recipe, args.out, progress=not args.no_progress)
    print(
        f"{record['arch']}: val mIoU {record['val']['miou']:.4f}, depth AbsRel {record['val']['depth_abs_rel']:.4f}"
        f" ({record['train_seconds']:.0f} s)"
    )
    control = None
    if args.control_from:
        control_dir = Path(args.control_from)
        control = rescore(control_dir) if args.rescore else json.loads((control_dir / TEACHER_JSON).read_text())
    elif not args.no_control:
        control = train_teacher(
            dataclasses.replace(recipe, arch="W" * recipe.depth), args.control_out, progress=not args.no_progress
        )
    if control is not None:
        record["control"] = control_summary(control)
        record["control"]["miou_gap"] = record["val"]["miou"] - control["val"]["miou"]
        atomic_write_json(Path(args.out) / TEACHER_JSON, record)
        print(
            f"control {control['arch']}: val mIoU {control['val']['miou']:.4f} "
            f"(gap {record['control']['miou_gap']:+.4f}), depth AbsRel {control['val']['depth_abs_rel']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
