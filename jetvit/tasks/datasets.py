"""Readers for the segmentation and depth evaluation data, each a map-style dataset of (image, target) samples.

image: float tensor (3, H, W), RGB in [0, 1], not normalised (`HybridViT.normalize` applies the model's statistics).
Targets:
- segmentation: int64 (H, W), train ids in [0, num_classes) or `IGNORE` (255);
- depth: float32 (H, W) in metres (or the file's units / `depth_scale`), 0 where there is no measurement;
- DA2K: the list of point pairs of the image, `{"point1": [y, x], "point2": [y, x], "closer_point": ...}`;
- classification: the class index (int) in [0, num_classes);
- video classification: (frames (T, 3, H, W), class index), T <= the frames asked for;
- detection: {"image_id": int (the COCO id), "boxes": float32 (K, 4) [x, y, w, h] in pixels of the image (COCO's
  convention: x, y the top-left corner), "category_ids": int64 (K,) (COCO category ids), "iscrowd": bool (K,)}.

Layouts:
- Cityscapes: `leftImg8bit/{split}/{city}/*_leftImg8bit.png`, `gtFine/{split}/{city}/*_gtFine_labelIds.png`.
- ADE20K: `ADEChallengeData2016/images/{training,validation}/*.jpg`, `.../annotations/{...}/*.png` (label 0 = other,
  ignored; 1..150 -> 0..149). The root may be the folder holding `ADEChallengeData2016` or that folder itself.
- Segmentation folder: `images/*.{jpg,png,...}` and `masks/*.png` (index PNGs, same stem).
- Depth folder: `images/*` and `depth/*.png` (16-bit, value / depth_scale) or `depth/*.npy` (float), same stem.
- DA2K: a JSON file mapping image paths (relative to the root) to pair lists, as the DA2K release ships it.
- Image folder (classification, ImageNet's layout): `{split}/{class}/*.{jpg,png,...}`; classes are the subfolders
  of the split sorted by name (index = position), as torchvision's `ImageFolder` numbers them.
- Video folder (UCF101 / Kinetics extracted to frames): `{split}/{class}/{clip}/*.{jpg,png,...}`, classes numbered as
  the image folder's; a clip's frames in natural order of their names (`frame_2` before `frame_10`).
- COCO detection: `instances_*.json` (COCO's `images`, `annotations`, `categories`) and the folder of its images;
  `coco_layout(root, split)` finds COCO's own `{root}/annotations/instances_{split}.json` and `{root}/{split}/`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from jetvit.tasks.config import DA2K_ANNOTATIONS, DEPTH_SCALE, FRAMES, SPLITS

IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
# Cityscapes labelIds (0..33) of the 19 evaluated classes; every other id (and the license plate, -1) is ignored.
CITYSCAPES_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes_label_lut() -> np.ndarray:
    """(256,) uint8 table labelId -> trainId (255 = ignore)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_LABEL_IDS):
        lut[label_id] = train_id
    return lut


def to_rgb(im: Any) -> Any:
    """A decoded PIL image of any mode -> 8-bit RGB, with its range kept.

    PIL's own `convert("RGB")` clips 16-bit grayscale (`I;16`, 16-bit PNG and TIFF) to white: those are scaled
    (65535 -> 255). 32-bit integer images (`I`) are read as 16-bit when a value exceeds 255, else as 8-bit; float
    images (`F`) as [0, 1] when no value exceeds 1, else as [0, 255]. Images with transparency (RGBA, LA, palette
    with a transparent colour) are composited over white, as a viewer shows them. 16-bit RGB PNGs are already
    scaled by PIL's decoder.
    """
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)  # (H, W)
        peak = float(a.max(initial=0.0))
        scale = 255.0 / 65535.0 if im.mode != "F" and (im.mode.startswith("I;16") or peak > 255) else 1.0
        if im.mode == "F" and peak <= 1.0:
            scale = 255.0
        im = Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8), mode="L")
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def read_image(path: Path) -> Tensor:
    """An image file -> float32 (3, H, W) RGB in [0, 1] (any PNG mode: `to_rgb`)."""
    from jetvit.io import open_image

    with open_image(path) as im:  # at most jetvit.io.MAX_IMAGE_PIXELS
        array = np.asarray(to_rgb(im), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def read_index_png(path: Path) -> np.ndarray:
    """A label PNG -> (H, W) integer array of its raw values (palette indices for 'P' images)."""
    from jetvit.io import open_image

    with open_image(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: a label map must be a single-channel index PNG, got mode {im.mode}")
        return np.asarray(im).astype(np.int64)


def _require_dir(root: Path, rel: str) -> Path:
    if not (root / rel).is_dir():
        raise FileNotFoundError(f"no {rel} under {root}")
    return root / rel


def _images_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _pair_by_stem(images: list[Path], targets: dict[str, Path], images_dir: Path, targets_dir: Path) -> list:
    missing = [p.name for p in images if p.stem not in targets]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} images in {images_dir} have no target in {targets_dir}: {shown}")
    return [(p, targets[p.stem]) for p in images]


class ImageTargetPairs(Dataset):
    """(image path, target path) pairs -> samples (image, target) of the same size; subclasses read the targets."""

    def __init__(self, pairs: list[tuple[Path, Path]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def read_target(self, path: Path) -> Tensor:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image_path, target_path = self.pairs[i]
        image, target = read_image(image_path), self.read_target(target_path)
        if image.shape[1:] != target.shape:
            raise ValueError(f"{image_path} is {tuple(image.shape[1:])} but {target_path} is {tuple(target.shape)}")
        return image, target


class SegmentationDataset(ImageTargetPairs):
    """(image path, label path) pairs plus a label mapping; subclasses only find the files."""

    num_classes: int
    class_names: tuple[str, ...] | None = None

    def __init__(self, pairs: list[tuple[Path, Path]], *, num_classes: int, lut: np.ndarray | None = None) -> None:
        super().__init__(pairs)
        self.num_classes = num_classes
        self.lut = lut  # raw label value -> train id, (256,) uint8, or None to keep the values

    def read_target(self, path: Path) -> Tensor:
        raw = read_index_png(path)
        if self.lut is not None:
            if raw.min() < 0 or raw.max() >= len(self.lut):
                raise ValueError(
                    f"{path}: label values {raw.min()}..{raw.max()} outside the {len(self.lut)}-entry table"
                )
            raw = self.lut[raw]
        return torch.from_numpy(raw.astype(np.int64))


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes fine annotations, 19 train ids, labelIds mapped by the standard table."""

    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str | Path, *, split: str = "val") -> None:
        root = Path(root)
        if split not in ("train", "val", "test"):
            raise ValueError(f"Cityscapes split must be train, val or test, got {split!r}")
        images_dir = _require_dir(root, f"leftImg8bit/{split}")
        labels_dir = _require_dir(root, f"gtFine/{split}")
        images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise FileNotFoundError(f"no {{city}}/*_leftImg8bit.png files in {images_dir}")
        pairs = []
        for p in images:
            stem = p.name[: -len("_leftImg8bit.png")]
            label = labels_dir / p.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label.is_file():
                raise FileNotFoundError(f"no label {label} for {p}")
            pairs.append((p, label))
        super().__init__(pairs, num_classes=19, lut=cityscapes_label_lut())


class ADE20KSegmentation(SegmentationDataset):
    """ADE20K (SceneParsing, 150 classes): label 0 ("other") is ignored, labels 1..150 become 0..149."""

    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def __init__(self, root: str | Path, *, split: str = "validation") -> None:
        root = Path(root)
        if split not in self.SPLITS:
            raise ValueError(f"ADE20K split must be one of {sorted(self.SPLITS)}, got {split!r}")
        split = self.SPLITS[split]
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        images_dir = _require_dir(root, f"images/{split}")
        labels_dir = _require_dir(root, f"annotations/{split}")
        images = sorted(images_dir.glob("*.jpg"))
        if not images:
            raise FileNotFoundError(f"no *.jpg images in {images_dir}")
        labels = {p.stem: p for p in labels_dir.glob("*.png")}
        lut = np.full(256, IGNORE, dtype=np.uint8)
        lut[1:151] = np.arange(150)
        super().__init__(_pair_by_stem(images, labels, images_dir, labels_dir), num_classes=150, lut=lut)


class FolderSegmentation(SegmentationDataset):
    """`images/` + `masks/` index PNGs matched by stem; values are class ids, 255 ignored."""

    def __init__(self, root: str | Path, *, num_classes: int) -> None:
        root = Path(root)
        if num_classes < 1 or num_classes > 255:
            raise ValueError(f"num_classes must be in 1..255 (255 is the ignore label), got {num_classes}")
        images_dir = _require_dir(root, "images")
        masks_dir = _require_dir(root, "masks")
        masks = {p.stem: p for p in masks_dir.glob("*.png")}
        super().__init__(_pair_by_stem(_images_in(images_dir), masks, images_dir, masks_dir), num_classes=num_classes)

    def read_target(self, path: Path) -> Tensor:
        target = super().read_target(path)
        bad = (target != IGNORE) & (target >= self.num_classes)
        if bad.any():
            values = sorted(set(target[bad].unique().tolist()))[:10]
            raise ValueError(f"{path}: mask values {values} are not classes 0..{self.num_classes - 1} nor {IGNORE}")
        return target


class DepthFolder(ImageTargetPairs):
    """`images/` + `depth/` maps matched by stem: 16-bit PNG (value / depth_scale) or `.npy` (float, as is)."""

    def __init__(self, root: str | Path, *, depth_scale: float = DEPTH_SCALE) -> None:
        root = Path(root)
        if not depth_scale > 0:
            raise ValueError(f"depth_scale must be > 0, got {depth_scale}")
        self.depth_scale = depth_scale
        images_dir = _require_dir(root, "images")
        depth_dir = _require_dir(root, "depth")
        maps = {p.stem: p for p in depth_dir.iterdir() if p.suffix.lower() in (".png", ".npy")}
        super().__init__(_pair_by_stem(_images_in(images_dir), maps, images_dir, depth_dir))

    def read_target(self, path: Path) -> Tensor:
        """A depth map -> float32 (H, W), non-finite values set to 0 (invalid)."""
        if path.suffix.lower() == ".npy":
            depth = np.load(path).astype(np.float32)
            if depth.ndim == 3 and depth.shape[0] == 1:
                depth = depth[0]
        else:
            from jetvit.io import open_image

            with open_image(path) as im:
                depth = np.asarray(im).astype(np.float32) / self.depth_scale
        if depth.ndim != 2:
            raise ValueError(f"{path}: a depth map must be 2-D (H, W), got shape {depth.shape}")
        return torch.from_numpy(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0))


class DA2K(Dataset):
    """DA2K relative-depth pairs: root holds the images and the annotation JSON (image path -> list of pairs)."""

    def __init__(self, root: str | Path, *, annotations: str | Path = DA2K_ANNOTATIONS) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"DA2K root {root} is not a folder")
        ann_path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
        if not ann_path.is_file():
            raise FileNotFoundError(f"no DA2K annotation file {ann_path}")
        try:
            with open(ann_path, encoding="utf-8") as f:
                table = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{ann_path} is not valid JSON ({e})") from None
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{ann_path}: expected a non-empty JSON object image path -> list of point pairs")
        self.items: list[tuple[Path, list[dict[str, Any]]]] = []
        for rel, pairs in sorted(table.items()):
            image = root / rel
            if not image.is_file():
                raise FileNotFoundError(f"DA2K image {image} (listed in {ann_path}) does not exist")
            if not isinstance(pairs, list):
                raise ValueError(f"{ann_path}: the entry for {rel} must be a list of pairs, got {type(pairs).__name__}")
            for pair in pairs:
                if not {"point1", "point2", "closer_point"} <= set(pair):
                    raise ValueError(f"{ann_path}: pair {pair} of {rel} needs point1, point2 and closer_point")
            self.items.append((image, pairs))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, list[dict[str, Any]]]:
        image, pairs = self.items[i]
        return read_image(image), pairs


def _class_folders(root: str | Path, split: str, *, layout: str) -> tuple[Path, list[str]]:
    """(`root/split`, its class folders sorted by name); `layout` says what is expected below the split in errors."""
    split_dir = _require_dir(Path(root), split)
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"no class folders in {split_dir} (expected {split_dir}/{layout})")
    return split_dir, classes


def _refuse_empty(empty: list[str], what: str, split_dir: Path) -> None:
    """FileNotFoundError naming (the first five of) the `empty` folders of `split_dir`, if any."""
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise FileNotFoundError(f"{what} ({', '.join(IMAGE_SUFFIXES)}) in {split_dir}: {shown}")


class ImageFolderClassification(Dataset):
    """`root/{split}/{class}/*` images -> samples (image, class index); classes sorted by folder name."""

    def __init__(self, root: str | Path, *, split: str = "val") -> None:
        split_dir, classes = _class_folders(root, split, layout="CLASS/*.jpg")
        self.class_names: tuple[str, ...] = tuple(classes)
        self.num_classes = len(classes)
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for index, name in enumerate(classes):
            files = sorted(
                p for p in (split_dir / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                empty.append(name)
            self.samples += [(p, index) for p in files]
        _refuse_empty(empty, "class folders without images", split_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return read_image(path), label


def build_segmentation_dataset(
    name: str, root: str | Path, *, split: str | None = None, num_classes: int | None = None
) -> SegmentationDataset:
    """name: cityscapes | ade20k | folder (folder needs num_classes; split names a subfolder of root if present).
    split: default the dataset's validation split (`SPLITS`)."""
    if name not in ("cityscapes", "ade20k", "folder"):
        raise ValueError(f"unknown segmentation dataset {name!r}; accepted: cityscapes, ade20k, folder")
    split = split or SPLITS[name][1]
    if name == "cityscapes":
        return CityscapesSegmentation(root, split=split)
    if name == "ade20k":
        return ADE20KSegmentation(root, split=split)
    if num_classes is None:
        raise ValueError("the folder dataset needs --num-classes")
    root = Path(root)
    return FolderSegmentation(root / split if (root / split / "images").is_dir() else root, num_classes=num_classes)


def build_classification_dataset(
    root: str | Path, *, split: str | None = None, clips: bool = False, frames: int = FRAMES
) -> ImageFolderClassification | VideoFolderClassification:
    """An image folder, or with `clips` a video folder whose samples are clips of up to `frames` frames; split:
    default the validation split."""
    split = split or SPLITS["folder"][1]
    if clips:
        return VideoFolderClassification(root, split=split, frames=frames)
    return ImageFolderClassification(root, split=split)


class VideoFolderClassification(Dataset):
    """`root/{split}/{class}/{clip}/*` frames -> samples (frames (T, 3, H, W), class index), T = min(frames, the
    clip's frame count) frames at evenly spaced times (`sample_frames`); classes sorted by folder name."""

    def __init__(self, root: str | Path, *, split: str = "val", frames: int = FRAMES) -> None:
        if frames < 1:
            raise ValueError(f"frames per clip must be >= 1, got {frames}")
        split_dir, classes = _class_folders(root, split, layout="CLASS/CLIP/*.jpg")
        self.class_names: tuple[str, ...] = tuple(classes)
        self.num_classes = len(classes)
        self.frames = frames
        self.samples: list[tuple[list[Path], int]] = []
        empty = []
        for index, name in enumerate(classes):
            clips = sorted(p for p in (split_dir / name).iterdir() if p.is_dir() and not p.name.startswith("."))
            for clip in clips:
                files = sorted(
                    (p for p in clip.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: _natural_key(p.name),
                )
                if not files:
                    empty.append(f"{name}/{clip.name}")
                self.samples.append((files, index))
            if not clips:
                empty.append(name)
        _refuse_empty(empty, "class or clip folders without frames", split_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        files, label = self.samples[i]
        frames = [read_image(files[j]) for j in sample_frames(len(files), self.frames)]
        sizes = {tuple(f.shape) for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"the frames of clip {files[0].parent} differ in size: {sorted(sizes)}")
        return torch.stack(frames), label  # (T, 3, H, W)


def sample_frames(count: int, frames: int) -> list[int]:
    """Indices of up to `frames` of a clip's `count` frames at evenly spaced times: the middle frame of each of
    `frames` equal segments (TSN's test-time sampling); every frame when the clip has no more than `frames`."""
    if count <= frames:
        return list(range(count))
    return [int((i + 0.5) * count / frames) for i in range(frames)]


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def coco_layout(root: str | Path, split: str) -> tuple[Path, Path]:
    """COCO's layout: (`{root}/{split}` image folder, `{root}/annotations/instances_{split}.json`)."""
    root = Path(root)
    images, annotations = root / split, root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise FileNotFoundError(
            f"no annotations/instances_{split}.json under {root} (COCO's layout: "
            f"{root}/annotations/instances_{split}.json and the images in {root}/{split}/)"
        )
    if not images.is_dir():
        raise FileNotFoundError(f"no image folder {images} for {annotations}")
    return images, annotations


class CocoDetection(Dataset):
    """A COCO-format detection set: `annotations` (an `instances_*.json`) and the folder of its images -> samples
    (image, target), target as the module docstring says, in the order of the file's `images` sorted by id.

    `ground_truth` is the parsed file (what pycocotools' evaluator reads), `categories` maps category id -> name.
    """

    def __init__(self, images: str | Path, annotations: str | Path) -> None:
        from jetvit.io import read_json

        self.images_dir, self.annotation_file = Path(images), Path(annotations)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"no annotation file {self.annotation_file}")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"no image folder {self.images_dir}")
        gt = read_json(self.annotation_file, expect=dict)
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(gt.get(k), list)]
        if missing:
            raise ValueError(f"{self.annotation_file} is not a COCO instances file: no list {missing}")
        self.ground_truth: dict[str, Any] = gt
        try:
            self.categories: dict[int, str] = {int(c["id"]): str(c["name"]) for c in gt["categories"]}
            self.images = sorted(gt["images"], key=lambda im: int(im["id"]))
            by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in self.images}
            for ann in gt["annotations"]:
                by_image[int(ann["image_id"])].append(ann)
            files = [self.images_dir / im["file_name"] for im in self.images]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.annotation_file} is not a COCO instances file: {type(e).__name__} {e}") from e
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise FileNotFoundError(
                f"{len(absent)} images of {self.annotation_file} are not in {self.images_dir}: {shown}"
            )
        self.files = files
        self.targets = [self._target(int(im["id"]), by_image[int(im["id"])]) for im in self.images]

    def _target(self, image_id: int, anns: list[dict[str, Any]]) -> dict[str, Any]:
        unknown = sorted({int(a["category_id"]) for a in anns} - set(self.categories))
        if unknown:
            raise ValueError(
                f"{self.annotation_file}: image {image_id} has annotations of unknown categories {unknown}"
            )
        return {
            "image_id": image_id,
            "boxes": torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4),  # (K, 4) xywh
            "category_ids": torch.tensor([int(a["category_id"]) for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
        }

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        return read_image(self.files[i]), self.targets[i]
