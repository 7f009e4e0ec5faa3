"""The built-in teacher: a small DINOv3-layout ViT pretrained from scratch on the `keyshapes` task.

It stands in for DINOv3 / Depth-Anything-V2 where their weights cannot be downloaded: 8 blocks of width 192 (3 heads),
patch 8, CLS + 4 registers, RoPE, LayerScale, GELU MLP 768, native resolution 128 x 128 (a 16 x 16 = 256-token
grid, four 8 x 8-patch windows). It is trained with two linear heads on its normed last-block patch features, as
DINOv3's linear probe reads them: a `LinearSegHead` for the 4 segmentation classes and a one-channel `LinearSegHead`
for the depth-like distance map. Loss: cross-entropy (background down-weighted) + `depth_weight` x L1.

`train_teacher(recipe)` trains one architecture; the same recipe with `arch="W" * 8` is the control that shows the
task needs global context (an all-window model cannot see the key from most shapes' windows).

Outputs in `recipe.out`: the backbone (`jetvit.save`: `config.json`, `model.safetensors`), `seg_head/` and
`depth_head/` (`jetvit.tasks.segmentation.save_probe`), and `teacher.json` with the recipe, the measured validation
scores and the time it took. Everything is seeded: the same recipe on the same machine rebuilds the same weights
(bit-identical given the same torch build and thread count).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.heads import LinearSegConfig, LinearSegHead
from jetvit.model import HybridViT, ViTConfig
from jetvit.schedule import lr_factor
from jetvit.tasks import synthetic
from jetvit.teachers import BUILTIN_DIR

log = logging.getLogger(__name__)

TEACHER_JSON = "teacher.json"
ASSET_DIR = BUILTIN_DIR  # the packaged built-in teacher (`load_teacher("builtin")`); the pretraining writes it


@dataclass
class TeacherRecipe:
    """How the built-in teacher is pretrained; `teacher.json` records the one used."""

    arch: str = ""  # "" = all F (the teacher); "W" * depth for the control
    dim: int = 192
    depth: int = 8
    num_heads: int = 3
    mlp_hidden: int = 768
    patch_size: int = 8
    num_registers: int = 4
    window_size: int = 8
    size: int = synthetic.NATIVE_SIZE
    layerscale_init: float = 0.1  # trained from scratch: start the residual branches small, not at DINOv3's 1e-5
    steps: int = 800
    batch_size: int = 8
    lr: float = 7e-4
    warmup: int = 40
    weight_decay: float = 0.05
    depth_weight: float = 1.0
    # Cross-entropy weight of the background (89% of the pixels); the other classes weigh 1. Without it the first
    # hundreds of steps learn little but the background, and a CPU budget has no steps to spare.
    background_weight: float = 0.2
    grad_clip: float = 1.0
    seed: int = 0
    data_seed: int = 0
    val_samples: int = 256
    eval_every: int = 100
    monitor_samples: int = 64  # validation samples scored every `eval_every` steps (the final score uses all)

    def model_config(self) -> ViTConfig:
        return ViTConfig(
            family="jetvit",
            img_size=self.size,
            patch_size=self.patch_size,
            dim=self.dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp="gelu",
            mlp_hidden=self.mlp_hidden,
            num_registers=self.num_registers,
            layerscale=True,
            pos_embed="rope",
            arch=self.arch,
            window_size=self.window_size,
        )


def build(recipe: TeacherRecipe) -> tuple[HybridViT, LinearSegHead, LinearSegHead]:
    """Fresh (backbone, segmentation head, depth head), seeded by `recipe.seed`."""
    torch.manual_seed(recipe.seed)
    model = HybridViT(recipe.model_config())
    for blk in model.blocks:
        nn.init.constant_(blk.ls1.gamma, recipe.layerscale_init)
        nn.init.constant_(blk.ls2.gamma, recipe.layerscale_init)
    seg_head = LinearSegHead(LinearSegConfig(in_dim=recipe.dim, num_classes=synthetic.NUM_CLASSES, dropout=0.0))
    depth_head = LinearSegHead(LinearSegConfig(in_dim=recipe.dim, num_classes=1, dropout=0.0))
    return model, seg_head, depth_head


def predict(model: HybridViT, seg_head: nn.Module, depth_head: nn.Module, image: Tensor) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) in [0, 1] -> (segmentation logits (B, C, H, W), depth-like map (B, H, W))."""
    patch = model.block_features(model.normalize(image), [-1])[0][0]  # (B, D, h, w)
    size = image.shape[-2:]
    return seg_head(patch, size), depth_head(patch, size)[:, 0]


@torch.no_grad()
def evaluate(
    model: HybridViT,
    seg_head: nn.Module,
    depth_head: nn.Module,
    *,
    samples: int,
    size: int = synthetic.NATIVE_SIZE,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Validation scores on the first `samples` of the `val` split: mIoU, pixel accuracy, per-class IoU, and the
    depth-like map's AbsRel / delta1 (the head is trained on the target's own scale: no alignment)."""
    from jetvit.tasks.metrics import DepthMetrics, SegMetrics

    was_training = model.training
    model.eval(), seg_head.eval(), depth_head.eval()
    seg = SegMetrics(synthetic.NUM_CLASSES)
    depth = DepthMetrics(align="none")
    for start in range(0, samples, batch_size):
        images, labels, target = synthetic.batch(
            "val", range(start, min(samples, start + batch_size)), size=size, seed=seed
        )
        logits, pred = predict(model, seg_head, depth_head, images)
        seg.update(logits.argmax(1), labels)
        depth.update(pred, target)
    model.train(was_training), seg_head.train(was_training), depth_head.train(was_training)
    s, d = seg.compute(), depth.compute()
    return {
        "miou": s["miou"],
        "pixel_acc": s["pixel_acc"],
        "per_class_iou": dict(zip(synthetic.CLASS_NAMES, s["per_class_iou"])),
        "depth_abs_rel": d["abs_rel"],
        "depth_delta1": d["delta1"],
        "samples": samples,
        "resolution": size,
    }


def final_scores(
    model: HybridViT, seg_head: LinearSegHead, depth_head: nn.Module, *, samples: int, seed: int = 0
) -> dict[str, Any]:
    """The recorded validation scores: `evaluate`'s, with the segmentation numbers recomputed by
    `jetvit.tasks.segmentation.evaluate_segmentation` (image by image, whole native images), the code path of
    `jetvit eval`, so that `jetvit eval` on the same samples reproduces the recorded mIoU."""
    from jetvit.tasks.segmentation import evaluate_segmentation

    size = model.cfg.img_size
    scores = evaluate(model, seg_head, depth_head, samples=samples, size=size, seed=seed)
    data = synthetic.KeyShapes(split="val", length=samples, size=size, seed=seed, target="seg")
    seg = evaluate_segmentation(model, seg_head, data, short_side=size, crop=size, stride=size, progress=False)
    scores.update(
        miou=seg["miou"],
        pixel_acc=seg["pixel_acc"],
        per_class_iou=dict(zip(synthetic.CLASS_NAMES, seg["per_class_iou"])),
    )
    return scores


def train_teacher(recipe: TeacherRecipe, out: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Pretrain `recipe.arch` from scratch on keyshapes and save it to `out` (see the module docstring).

    Returns the record written to `out/teacher.json`.
    """
    from tqdm import tqdm

    from jetvit.io import atomic_write_json, save
    from jetvit.tasks.segmentation import save_probe

    out = Path(out)
    model, seg_head, depth_head = build(recipe)
    params = [*model.parameters(), *seg_head.parameters(), *depth_head.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms, LayerScale, prefix tokens
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.999),
    )
    class_weight = torch.ones(synthetic.NUM_CLASSES)
    class_weight[0] = recipe.background_weight
    model.train(), seg_head.train(), depth_head.train()
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc=f"pretrain {model.arch}", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = lr_factor(step, steps=recipe.steps, warmup=recipe.warmup, base=recipe.lr)  # warm-up, cosine to zero
        for group in opt.param_groups:
            group["lr"] = lr
        first = step * recipe.batch_size
        images, labels, target = synthetic.batch(
            "train", range(first, first + recipe.batch_size), size=recipe.size, seed=recipe.data_seed
        )
        logits, pred = predict(model, seg_head, depth_head, images)
        seg_loss = F.cross_entropy(logits, labels, weight=class_weight)
        depth_loss = F.l1_loss(pred, target)
        loss = seg_loss + recipe.depth_weight * depth_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        bar.set_postfix(seg=f"{seg_loss.item():.3f}", depth=f"{depth_loss.item():.3f}")
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
            scores = evaluate(model, seg_head, depth_head, samples=recipe.monitor_samples, seed=recipe.data_seed)
            row = {
                "step": step + 1,
                "seconds": round(time.perf_counter() - start, 1),
                "seg_loss": seg_loss.item(),
                "depth_loss": depth_loss.item(),
                "val_miou": scores["miou"],
                "val_depth_abs_rel": scores["depth_abs_rel"],
            }
            history.append(row)
            log.info("%s", json.dumps(row))
    train_seconds = time.perf_counter() - start
    model.eval(), seg_head.eval(), depth_head.eval()
    final = final_scores(model, seg_head, depth_head, samples=recipe.val_samples, seed=recipe.data_seed)
    save(model, out)
    # "probe" holds the evaluation geometry `jetvit eval` reads: whole native-resolution images, one window each.
    native = {"eval_short_side": recipe.size, "eval_crop": recipe.size, "eval_stride": recipe.size, "layer": -1}
    meta = {"task": "keyshapes", "probe": native}
    save_probe(seg_head, out / "seg_head", meta={**meta, "classes": list(synthetic.CLASS_NAMES)})
    save_probe(depth_head, out / "depth_head", meta={**meta, "target": "distance to the key, 1 + 2 d/S"})
    record = {
        "task": "keyshapes",
        "arch": model.arch,
        "recipe": dataclasses.asdict(recipe),
        "val": final,
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    atomic_write_json(out / TEACHER_JSON, record)
    return record


def tiny_teacher(work: str | os.PathLike) -> Path:
    """A 4-block, width-32 teacher at 32x32 (4x4 patches, 2x2-patch windows), trained for a few steps, written once
    under `work/tiny-teacher` and reused: the benchmarks' `--tiny` settings and their tests run on it."""
    out = Path(work) / "tiny-teacher"
    if not (out / TEACHER_JSON).is_file():
        recipe = TeacherRecipe(
            dim=32, depth=4, num_heads=2, mlp_hidden=64, size=32, window_size=2, steps=3, batch_size=2, warmup=1,
            eval_every=3, val_samples=4, monitor_samples=2,
        )  # fmt: skip
        train_teacher(recipe, out, progress=False)
    return out


def load_builtin(directory: str | os.PathLike = ASSET_DIR) -> tuple[HybridViT, LinearSegHead, LinearSegHead, dict]:
    """(backbone, seg head, depth head, teacher.json record) of a teacher written by `train_teacher`."""
    from jetvit.io import load
    from jetvit.tasks.segmentation import load_probe

    directory = Path(directory)
    if not (directory / TEACHER_JSON).is_file():
        raise FileNotFoundError(f"{directory} holds no {TEACHER_JSON}; build the teacher with `make teacher`")
    model = load(directory)
    seg_head, _ = load_probe(directory / "seg_head")
    depth_head, _ = load_probe(directory / "depth_head")
    record = json.loads((directory / TEACHER_JSON).read_text())
    return model, seg_head.eval(), depth_head.eval(), record
