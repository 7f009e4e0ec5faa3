"""Image sources, crops and the deterministic sample plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jetvit.train.data import (
    DistillBatches,
    FolderImages,
    ImageSet,
    SampleImages,
    SamplePlan,
    holdout_images,
    normalize,
    random_resized_crop,
    shard,
    split_holdout,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _folder(tmp_path, n=5, corrupt=1):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = tmp_path / f"d{i % 2}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(
            sub / f"im{i}.{['png', 'jpg', 'webp'][i % 3]}"
        )
    for i in range(corrupt):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def _batches(images, plan, rank=0, world=1, micro=2, start=0):
    return DistillBatches(
        images,
        plan,
        stage_offset=0,
        start_step=start,
        steps=3,
        batch_size=4,
        micro_batch_size=micro,
        rank=rank,
        world=world,
        size=(16, 24),
        scale=(0.25, 1.0),
        ratio=(0.75, 1.33),
        hflip=True,
    )


def test_folder_recursive_and_corrupt_images_skipped_and_counted(tmp_path):
    src = FolderImages(_folder(tmp_path, n=5, corrupt=1))
    assert len(src) == 6 and any(src.name(i).startswith("d1/") for i in range(6))
    images = ImageSet(src, list(range(len(src))))
    bad = [i for i in range(6) if src.name(i).startswith("bad")][0]
    img, skipped = images.get(bad)
    assert skipped == ["bad0.jpg"] and img.mode == "RGB"
    _, skipped_again = images.get(bad)  # remembered, not retried
    assert skipped_again == []
    ds = _batches(images, SamplePlan(len(images), seed=0, phase="t"))
    total = sum(len(ds[i]["skipped"]) for i in range(len(ds)))
    assert total == 0  # already known bad in this process


def test_empty_and_missing_folders_are_errors_naming_them(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        FolderImages(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing"):
        FolderImages(tmp_path / "missing")


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    images = ImageSet(FolderImages(tmp_path), [0])
    with pytest.raises(ValueError, match="no readable image"):
        images.get(0)


def test_sample_photos_are_rgb():
    src = SampleImages()
    assert len(src) >= 8
    for i in range(len(src)):
        assert src.load(i).mode == "RGB"


def test_batches_are_a_pure_function_of_the_step_and_shard_the_global_batch(tmp_path):
    src = FolderImages(_folder(tmp_path, n=6, corrupt=0))
    images = ImageSet(src, list(range(6)))
    plan = SamplePlan(6, seed=3, phase="step1")
    one = _batches(images, plan, micro=2)
    assert one.accum == 2 and len(one) == 6
    x = one[3]["images"]
    assert x.shape == (2, 3, 16, 24) and x.dtype == torch.uint8
    # The same sample from a fresh plan (a resumed run) and from a run that starts at step 1.
    again = _batches(images, SamplePlan(6, seed=3, phase="step1"), start=1)
    torch.testing.assert_close(again[1]["images"], x, rtol=0, atol=0)
    # Two processes, each half of the global batch: together the same images as one process.
    r0 = _batches(images, plan, rank=0, world=2, micro=1)
    r1 = _batches(images, plan, rank=1, world=2, micro=1)
    step1_single = torch.cat([one[2]["images"], one[3]["images"]])
    step1_two = torch.cat([r0[2]["images"], r0[3]["images"], r1[2]["images"], r1[3]["images"]])
    torch.testing.assert_close(step1_two, step1_single, rtol=0, atol=0)
    # Another seed gives other crops.
    other = _batches(images, SamplePlan(6, seed=4, phase="step1"))
    assert not torch.equal(other[3]["images"], x)


def test_uint8_batches_normalised_on_the_device_equal_float_rendering(tmp_path):
    """The loader sends uint8 pixels; `normalize` where the model runs gives exactly what rendering to float32 in the
    workers gave (PIL's resize already rounds to uint8, so nothing is lost on the way)."""
    src = FolderImages(_folder(tmp_path, n=4, corrupt=0))
    images = ImageSet(src, list(range(4)))
    plan = SamplePlan(4, seed=1, phase="p")
    item = _batches(images, plan, micro=2)[1]  # step 0, positions 2 and 3
    for j, pos in enumerate((2, 3)):
        img, _ = images.get(plan.image(pos))
        crop = random_resized_crop(plan.rng(pos), img.width, img.height, scale=(0.25, 1.0), ratio=(0.75, 1.33),
                                   hflip=True)  # fmt: skip
        out = img.resize((24, 16), Image.Resampling.BICUBIC, box=crop.box)
        if crop.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        raw = torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1)
        expect = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        got = normalize(item["images"][j], torch.tensor(MEAN), torch.tensor(STD))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_epochs_visit_every_image_once():
    plan = SamplePlan(7, seed=0, phase="p")
    assert sorted(plan.image(s) for s in range(7)) == list(range(7))
    assert sorted(plan.image(s) for s in range(7, 14)) == list(range(7))


def test_crop_inside_image_and_normalisation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = random_resized_crop(rng, 100, 60, scale=(0.1, 1.0), ratio=(0.5, 2.0), hflip=True)
        left, top, right, bottom = c.box
        assert 0 <= left < right <= 100 + 1e-6 and 0 <= top < bottom <= 60 + 1e-6
    images = ImageSet(SampleImages(("astronaut",)), [0])
    x, skipped = holdout_images(images, (32, 32), MEAN, STD)
    raw = np.asarray(images.get(0)[0].resize((32, 32), box=(0, 0, 512, 512)), dtype=np.float32) / 255
    expect = (torch.from_numpy(raw).permute(2, 0, 1) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
        3, 1, 1
    )
    assert skipped == [] and x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x[0], expect, atol=0.05, rtol=0)


def test_split_holdout_and_shard_errors():
    train, held = split_holdout(10, 3)
    assert len(held) == 3 and not set(train) & set(held) and len(train) == 7
    with pytest.raises(ValueError, match="holdout=10"):
        split_holdout(10, 10)
    with pytest.raises(ValueError, match="batch_size=5"):
        shard(5, 0, 2)
