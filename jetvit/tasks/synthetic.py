"""`keyshapes`: a synthetic dense-prediction task that needs global context, generated on the fly from a seed.

Pretrained DINOv3 / Depth-Anything-V2 weights cannot be downloaded everywhere, so the project pretrains its own small
teacher on this task (`benchmarks/pretrain_teacher.py`, `make teacher`) and runs the method on it (`make demo`,
`make replicate`).

A scene, in coordinates relative to the image side S (so it renders at any resolution):

- a textured grey background (a few random low-frequency waves plus pixel noise, a faint random tint);
- one *key*: a ring (annulus) of a random saturated hue, anywhere in the image;
- 3 to 6 filled shapes, disks or squares, that do not overlap each other or the key. Each has, with probability 1/2,
  exactly the key's hue, else a hue at least 60 degrees away from it.

Segmentation (`NUM_CLASSES` = 4): 0 background, 1 key, 2 shape of the key's hue, 3 shape of another hue. Where a shape
is, is visible locally; whether it *matches* is only decidable by looking at the key, which is anywhere in the image:
at the native 128 x 128 with 8-pixel patches and 8 x 8-patch windows, a shape shares its window with the key about a
quarter of the time. (Disks and squares are one class: the shape's kind is nuisance variation, so that the score
rests on the global part of the task.)

Depth-like target: the distance of each pixel to the key's centre, `1 + 2 * dist / S` (so 1 at the key, about 3.8 in
the farthest corner). It depends on where the key is relative to the pixel, which a token's content does not carry
in a RoPE model: only attention between the pixel's token and the key's tokens can compute it.

Detection (`write_coco`, a COCO-format set): one box per object, the tight box of its pixels, its category the
segmentation class (1 key, 2 shape of the key's hue, 3 shape of another hue); like the segmentation, whether a shape
is a 2 or a 3 needs the key, anywhere in the image.

Sample `i` of split `s` with seed `k` is a pure function of `(k, s, i)` (numpy's `default_rng` seeded with the
triple), so any process regenerates exactly the same data, and the validation split is disjoint from the training
split by construction.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

NUM_CLASSES = 4
CLASS_NAMES = ("background", "key", "shape of the key's hue", "shape of another hue")
SPLITS = {"train": 0, "val": 1, "test": 2}
NATIVE_SIZE = 128


@dataclass(frozen=True)
class Shape:
    kind: str  # "disk" | "square"
    cy: float  # centre, fraction of the image side
    cx: float
    r: float  # radius (half side for squares), fraction of the image side
    hue: float  # [0, 1)
    match: bool


@dataclass(frozen=True)
class Scene:
    key: tuple[float, float, float, float, float]  # cy, cx, outer r, inner r, hue (fractions of the side)
    shapes: tuple[Shape, ...]
    background: tuple[float, ...]  # base grey, tint r, g, b, then wave parameters (see `_background`)
    noise_seed: int


def _hue_rgb(hue: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.85, 0.9), dtype=np.float32)


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def sample_scene(seed: int, split: str, index: int) -> Scene:
    """The scene of sample `index` of `split` for `seed` (pure function of the three)."""
    if split not in SPLITS:
        raise ValueError(f"unknown keyshapes split {split!r}; accepted: {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    key_r = rng.uniform(0.055, 0.075)
    key = (rng.uniform(key_r, 1 - key_r), rng.uniform(key_r, 1 - key_r), key_r, key_r * 0.55, rng.uniform())
    placed = [(key[0], key[1], key_r)]
    shapes: list[Shape] = []
    n = int(rng.integers(3, 7))
    for _ in range(200):  # rejection sampling of non-overlapping shapes; a crowded scene keeps fewer
        if len(shapes) == n:
            break
        kind = "disk" if rng.uniform() < 0.5 else "square"
        r = rng.uniform(0.05, 0.10)
        cy, cx = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
        reach = r * (math.sqrt(2) if kind == "square" else 1.0)
        if any(math.hypot(cy - py, cx - px) < reach + pr + 0.02 for py, px, pr in placed):
            continue
        match = bool(rng.uniform() < 0.5)
        hue = key[4] if match else (key[4] + rng.uniform(1 / 6, 5 / 6)) % 1.0
        placed.append((cy, cx, reach))
        shapes.append(Shape(kind, cy, cx, r, hue, match))
    waves = rng.uniform(-1, 1, size=(4, 4))  # per wave: freq y, freq x, phase, amplitude
    background = (rng.uniform(0.35, 0.65), *rng.uniform(-0.05, 0.05, size=3), *waves.ravel())
    return Scene(key, tuple(shapes), tuple(float(v) for v in background), int(rng.integers(2**31)))


def _background(scene: Scene, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base, tint, waves = scene.background[0], np.array(scene.background[1:4]), np.array(scene.background[4:])
    grey = np.full(yy.shape, base, dtype=np.float32)
    for fy, fx, phase, amp in waves.reshape(4, 4):
        grey += 0.06 * amp * np.sin(2 * math.pi * (3 * fy * yy + 3 * fx * xx) + math.pi * phase)
    return grey[..., None] + tint[None, None, :].astype(np.float32)  # (H, W, 3)


def render(scene: Scene, size: int | tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Render a scene at `size` (side, or (H, W); scenes are drawn in a unit square stretched to it).

    Returns image float32 (3, H, W) in [0, 1] (multiples of 1/255), segmentation int64 (H, W) in
    [0, NUM_CLASSES), depth-like float32 (H, W) (distance to the key, see the module docstring).
    """
    H, W = (size, size) if isinstance(size, int) else size
    yy, xx = _pixel_grid(H, W)
    image = _background(scene, yy, xx)
    seg = np.zeros((H, W), dtype=np.int64)
    for class_id, hue, mask in _objects(scene, yy, xx):
        image[mask] = _hue_rgb(hue)
        seg[mask] = class_id
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, 0.03, size=image.shape).astype(np.float32)
    # Quantised to 8 bits, so that a sample written as PNG (`write_folder`) reads back bit-identical.
    image = np.round(np.clip(image + noise, 0.0, 1.0) * 255.0) / 255.0
    depth = (1.0 + 2.0 * np.hypot(yy - scene.key[0], xx - scene.key[1])).astype(np.float32)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(seg), torch.from_numpy(depth)


def _pixel_grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres as fractions of the image side: (y (H, W), x (H, W))."""
    return np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")


def _objects(scene: Scene, yy: np.ndarray, xx: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """(segmentation class, hue, mask (H, W) bool) of the key and of every shape, in drawing order. The objects do not
    overlap (`sample_scene`), so each mask is exactly the object's pixels in the rendered scene."""
    ky, kx, ro, ri, khue = scene.key
    dist = np.hypot(yy - ky, xx - kx)
    objects = [(1, khue, (dist <= ro) & (dist >= ri))]
    for s in scene.shapes:
        if s.kind == "disk":
            mask = np.hypot(yy - s.cy, xx - s.cx) <= s.r
        else:
            mask = (np.abs(yy - s.cy) <= s.r) & (np.abs(xx - s.cx) <= s.r)
        objects.append((2 if s.match else 3, s.hue, mask))
    return objects


def object_boxes(scene: Scene, size: int | tuple[int, int]) -> list[dict[str, Any]]:
    """The scene's objects rendered at `size` as COCO annotations without ids: {"category_id" (the segmentation
    class: 1 key, 2 shape of the key's hue, 3 shape of another hue), "bbox" [x, y, w, h] (the tight box of the
    object's pixels: x, y the top-left pixel's corner, in pixels), "area" (its pixel count), "iscrowd": 0}. Objects
    too small to cover a pixel at this size are left out."""
    H, W = (size, size) if isinstance(size, int) else size
    out = []
    for class_id, _, mask in _objects(scene, *_pixel_grid(H, W)):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        box = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        out.append({"category_id": class_id, "bbox": [float(v) for v in box], "area": float(mask.sum()), "iscrowd": 0})
    return out


TARGETS = ("seg", "depth", "both")


class KeyShapes(Dataset):
    """`length` samples of a split, in the convention of the readers in `jetvit.tasks.datasets`: images (3, H, W) in
    [0, 1], not normalised. `target` picks what comes with them: "seg" -> (image, seg (H, W) int64), "depth" ->
    (image, depth (H, W) float32), "both" -> (image, seg, depth).
    """

    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES

    def __init__(
        self, *, split: str = "val", length: int = 256, size: int = NATIVE_SIZE, seed: int = 0, target: str = "seg"
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown keyshapes split {split!r}; accepted: {sorted(SPLITS)}")
        if length < 1:
            raise ValueError(f"keyshapes length must be >= 1, got {length}")
        if target not in TARGETS:
            raise ValueError(f"keyshapes target must be one of {TARGETS}, got {target!r}")
        self.split, self.length, self.size, self.seed, self.target = split, length, size, seed, target

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        image, seg, depth = render(sample_scene(self.seed, self.split, i), self.size)
        return {"seg": (image, seg), "depth": (image, depth), "both": (image, seg, depth)}[self.target]


def batch(split: str, indices: range | list[int], *, size: int = NATIVE_SIZE, seed: int = 0) -> tuple[Tensor, ...]:
    """Stacked (images (B, 3, H, W), seg (B, H, W), depth (B, H, W)) of the given sample indices."""
    items = [render(sample_scene(seed, split, i), size) for i in indices]
    return tuple(torch.stack(t) for t in zip(*items))


def write_folder(
    root: str | Path, *, split: str = "val", length: int = 64, size: int = NATIVE_SIZE, seed: int = 0
) -> Path:
    """Materialise samples as files the generic readers understand: `images/*.png`, `masks/*.png` (class ids) and
    `depth/*.npy`, same stems. Used to hand the task to tools that read image folders (distillation data, the
    `folder` segmentation / depth datasets). Returns `root`."""
    from PIL import Image

    root = Path(root)
    for sub in ("images", "masks", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(length):
        image, seg, depth = render(sample_scene(seed, split, i), size)
        stem = f"{split}_{i:05d}"
        rgb = np.round(image.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
        Image.fromarray(seg.numpy().astype(np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
        np.save(root / "depth" / f"{stem}.npy", depth.numpy())
    return root


COCO_CATEGORIES = ({"id": 1, "name": "key"}, {"id": 2, "name": "matching shape"}, {"id": 3, "name": "other shape"})


def write_coco(
    root: str | Path,
    *,
    split: str = "val",
    length: int = 16,
    size: int | tuple[int, int] = NATIVE_SIZE,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Materialise samples as a COCO-format detection set, the layout `jetvit.tasks.datasets.coco_layout` reads:
    `root/{name}/{stem}.png` and `root/annotations/instances_{name}.json` (`name` defaults to `split`). Categories
    are the segmentation classes (`COCO_CATEGORIES`, ids 1..3 as COCO numbers from 1); boxes come from the objects'
    masks (`object_boxes`); image ids count from 1 and annotation ids from 1. Returns the annotation file."""
    from PIL import Image

    from jetvit.io import atomic_write_json

    name = name or split
    H, W = (size, size) if isinstance(size, int) else size
    images_dir = Path(root) / name
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(length):
        scene = sample_scene(seed, split, i)
        image, _, _ = render(scene, (H, W))
        file_name = f"{split}_{i:05d}.png"
        rgb = np.round(image.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
        Image.fromarray(rgb).save(images_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "height": H, "width": W})
        for box in object_boxes(scene, (H, W)):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **box})
    path = Path(root) / "annotations" / f"instances_{name}.json"
    description = f"keyshapes {split} scenes (seed {seed}) as COCO boxes"
    atomic_write_json(
        path,
        {
            "info": {"description": description},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in COCO_CATEGORIES],
        },
    )
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m jetvit.tasks.synthetic ROOT [--split val] [--length 256] [--size 128] [--seed 0] [--coco]`: write a
    split as a folder that `jetvit probe` / `jetvit eval --dataset folder --num-classes 4` read (ROOT/SPLIT/{images,
    masks,depth}), or with `--coco` as a COCO detection set that `jetvit eval --task det --data ROOT --split SPLIT`
    reads (ROOT/SPLIT/*.png, ROOT/annotations/instances_SPLIT.json)."""
    import argparse

    p = argparse.ArgumentParser(description="write keyshapes samples as an image/mask/depth folder or a COCO set")
    p.add_argument("root")
    p.add_argument("--split", default="val", choices=sorted(SPLITS))
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--size", type=int, default=NATIVE_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coco", action="store_true", help="write COCO-format boxes (instances json) instead of masks")
    args = p.parse_args(argv)
    if args.coco:
        out = write_coco(args.root, split=args.split, length=args.length, size=args.size, seed=args.seed)
    else:
        out = write_folder(
            Path(args.root) / args.split, split=args.split, length=args.length, size=args.size, seed=args.seed
        )
    print(f"wrote {args.length} {args.split} samples to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
