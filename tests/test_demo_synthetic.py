"""The built-in `keyshapes` task: deterministic, the advertised labels, and lossless through the folder readers."""

import numpy as np
import pytest
import torch

from jetvit.tasks import synthetic
from jetvit.tasks.datasets import build_segmentation_dataset


def test_samples_are_a_pure_function_of_seed_split_index():
    a = synthetic.KeyShapes(split="train", length=4, seed=3, target="both")
    b = synthetic.KeyShapes(split="train", length=4, seed=3, target="both")
    for i in (3, 0):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)
    other_split = synthetic.KeyShapes(split="val", length=1, seed=3)[0][0]
    other_seed = synthetic.KeyShapes(split="train", length=1, seed=4)[0][0]
    assert not torch.equal(a[0][0], other_split) and not torch.equal(a[0][0], other_seed)


def test_labels_follow_the_scene():
    scene = synthetic.sample_scene(0, "val", 5)
    image, seg, depth = synthetic.render(scene, 128)
    assert image.shape == (3, 128, 128) and seg.shape == depth.shape == (128, 128)
    assert 0 <= image.min() and image.max() <= 1
    ky, kx, ro, ri, _ = scene.key
    # the key ring is class 1 and the depth-like map is smallest at the key's centre
    assert seg[int(ky * 128), int((kx + (ro + ri) / 2) * 128)] == 1
    iy, ix = np.unravel_index(depth.argmin().item(), depth.shape)
    assert abs(iy - ky * 128) <= 1 and abs(ix - kx * 128) <= 1
    for s in scene.shapes:
        expected = 2 if s.match else 3
        assert seg[int(s.cy * 128), int(s.cx * 128)] == expected
        if s.match:
            assert s.hue == scene.key[4]
        else:
            assert synthetic._hue_distance(s.hue, scene.key[4]) >= 1 / 6 - 1e-9


def test_classes_are_balanced_between_match_and_other():
    counts = np.zeros(synthetic.NUM_CLASSES)
    for i in range(40):
        for s in synthetic.sample_scene(0, "train", i).shapes:
            counts[2 if s.match else 3] += 1
    assert counts[2:].min() > 0.4 * counts[2:].sum()


def test_written_folder_reads_back_bit_identical(tmp_path):
    synthetic.write_folder(tmp_path / "val", split="val", length=3, size=64)
    ds = build_segmentation_dataset("folder", tmp_path, split="val", num_classes=synthetic.NUM_CLASSES)
    ref = synthetic.KeyShapes(split="val", length=3, size=64)
    for i in range(3):
        (x, y), (x2, y2) = ds[i], ref[i]
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert np.load(tmp_path / "val" / "depth" / "val_00000.npy").shape == (64, 64)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="split"):
        synthetic.KeyShapes(split="nope")
    with pytest.raises(ValueError, match="target"):
        synthetic.KeyShapes(target="normals")
