"""Dataset readers on tiny generated folders in each layout, and the errors wrong layouts raise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jetvit.model import HybridViT, ViTConfig
from jetvit.tasks.datasets import (
    DA2K,
    IGNORE,
    ADE20KSegmentation,
    CityscapesSegmentation,
    DepthFolder,
    FolderSegmentation,
    build_segmentation_dataset,
    cityscapes_label_lut,
)


def write_rgb(path: Path, h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def write_labels(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    rgb = write_rgb(tmp_path / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png")
    label_ids = np.array([[0, 7, 8, 11], [26, 33, 9, 4]] * 3)[:, :4].repeat(2, axis=1)  # (6, 8)
    write_labels(tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png", label_ids)
    ds = CityscapesSegmentation(tmp_path, split="val")
    assert len(ds) == 1 and ds.num_classes == 19
    image, target = ds[0]
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    # labelId 0 void, 7 road, 8 sidewalk, 11 building, 26 car, 33 bicycle, 9 parking (ignored), 4 static (ignored)
    assert target[0, ::2].tolist() == [IGNORE, 0, 1, 2]
    assert target[1, ::2].tolist() == [13, 18, IGNORE, IGNORE]
    lut = cityscapes_label_lut()
    assert sorted(set(lut.tolist()) - {IGNORE}) == list(range(19))


def test_cityscapes_wrong_layouts(tmp_path: Path) -> None:
    write_rgb(tmp_path / "leftImg8bit/val/a/a_1_leftImg8bit.png")
    with pytest.raises(FileNotFoundError, match=f"no gtFine/val under {tmp_path}"):
        CityscapesSegmentation(tmp_path, split="val")
    (tmp_path / "gtFine/val/a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="a_1_gtFine_labelIds.png"):
        CityscapesSegmentation(tmp_path, split="val")
    with pytest.raises(ValueError, match="'valid'"):
        CityscapesSegmentation(tmp_path, split="valid")


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    write_rgb(base / "images/validation/ADE_val_00000001.jpg")
    labels = np.zeros((6, 8), dtype=np.uint8)
    labels[0, :3] = [1, 150, 0]
    write_labels(base / "annotations/validation/ADE_val_00000001.png", labels)
    for root in (tmp_path, base):  # the parent folder or the dataset folder itself
        ds = ADE20KSegmentation(root, split="val")
        _, target = ds[0]
        assert ds.num_classes == 150
        assert target[0, :3].tolist() == [0, 149, IGNORE]
        assert (target[1:] == IGNORE).all()
    (base / "annotations/validation/ADE_val_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_val_00000001.jpg"):
        ADE20KSegmentation(tmp_path)
    with pytest.raises(FileNotFoundError, match="no images/training under"):
        ADE20KSegmentation(tmp_path, split="train")


def test_folder_segmentation_by_stem_and_bad_values(tmp_path: Path) -> None:
    write_rgb(tmp_path / "images/a.jpg", seed=1)
    write_rgb(tmp_path / "images/b.png", seed=2)
    write_labels(tmp_path / "masks/a.png", np.full((6, 8), 2))
    write_labels(tmp_path / "masks/b.png", np.full((6, 8), IGNORE))
    ds = FolderSegmentation(tmp_path, num_classes=3)
    assert [p.name for p, _ in ds.pairs] == ["a.jpg", "b.png"]
    assert (ds[0][1] == 2).all() and (ds[1][1] == IGNORE).all()
    assert build_segmentation_dataset("folder", tmp_path, num_classes=3).pairs == ds.pairs

    with pytest.raises(ValueError, match=r"mask values \[2\]"):
        FolderSegmentation(tmp_path, num_classes=2)[0]
    write_rgb(tmp_path / "images/c.png")
    with pytest.raises(FileNotFoundError, match="have no target.*c.png"):
        FolderSegmentation(tmp_path, num_classes=3)
    write_rgb(tmp_path / "only_images/images/a.png")
    with pytest.raises(FileNotFoundError, match="no masks under"):
        FolderSegmentation(tmp_path / "only_images", num_classes=3)
    with pytest.raises(ValueError, match="unknown segmentation dataset 'voc'"):
        build_segmentation_dataset("voc", tmp_path)


def test_segmentation_size_mismatch_is_named(tmp_path: Path) -> None:
    write_rgb(tmp_path / "images/a.png", h=6, w=8)
    write_labels(tmp_path / "masks/a.png", np.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"a.png is \(6, 8\) but .*a.png is \(5, 8\)"):
        FolderSegmentation(tmp_path, num_classes=2)[0]


def test_depth_folder_png16_with_scale_and_npy(tmp_path: Path) -> None:
    write_rgb(tmp_path / "images/x.png")
    write_rgb(tmp_path / "images/y.jpg")
    mm = np.arange(48, dtype=np.uint16).reshape(6, 8) * 500
    (tmp_path / "depth").mkdir()
    Image.fromarray(mm).save(tmp_path / "depth/x.png")
    metres = np.random.default_rng(0).uniform(0.5, 10, (6, 8)).astype(np.float32)
    metres[0, 0] = np.nan
    np.save(tmp_path / "depth/y.npy", metres)
    ds = DepthFolder(tmp_path, depth_scale=1000.0)
    _, dx = ds[0]
    _, dy = ds[1]
    assert dx.dtype == torch.float32
    torch.testing.assert_close(dx, torch.from_numpy(mm.astype(np.float32) / 1000))
    assert dy[0, 0] == 0  # NaN = no measurement
    torch.testing.assert_close(dy[1:], torch.from_numpy(metres[1:]))
    assert DepthFolder(tmp_path, depth_scale=256.0)[0][1].max() == pytest.approx(mm.max() / 256)
    with pytest.raises(ValueError, match="depth_scale"):
        DepthFolder(tmp_path, depth_scale=0)
    (tmp_path / "depth/y.npy").unlink()
    with pytest.raises(FileNotFoundError, match="y.jpg"):
        DepthFolder(tmp_path)


def test_da2k_reads_pairs_and_names_missing_images(tmp_path: Path) -> None:
    write_rgb(tmp_path / "images/indoor/0.jpg")
    pairs = [{"point1": [1, 2], "point2": [3, 4], "closer_point": "point2"}]
    (tmp_path / "annotations.json").write_text(json.dumps({"images/indoor/0.jpg": pairs}))
    ds = DA2K(tmp_path)
    image, got = ds[0]
    assert image.shape == (3, 6, 8) and got == pairs
    (tmp_path / "annotations.json").write_text(json.dumps({"images/missing.jpg": pairs}))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        DA2K(tmp_path)
    (tmp_path / "annotations.json").write_text(json.dumps({"images/indoor/0.jpg": [{"point1": [0, 0]}]}))
    with pytest.raises(ValueError, match="closer_point"):
        DA2K(tmp_path)
    with pytest.raises(FileNotFoundError, match="no DA2K annotation file"):
        DA2K(tmp_path, annotations="other.json")


def test_normalize_uses_imagenet_statistics() -> None:
    normalize = HybridViT(ViTConfig(dim=32, depth=1, num_heads=2)).normalize  # the readers' images go through it
    out = normalize(torch.tensor([0.485, 0.456, 0.406])[:, None, None].expand(3, 2, 2))
    torch.testing.assert_close(out, torch.zeros(3, 2, 2))
