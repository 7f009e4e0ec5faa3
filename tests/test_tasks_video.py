"""Video classification (UCF101-style clips of frames): frame sampling and the reader, clip features as the mean of
the frames', and `jetvit probe --task video` / `jetvit eval --task video` run for real on generated clips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jetvit
from jetvit.cli import main
from jetvit.heads import LinearClsConfig, LinearClsHead
from jetvit.tasks.classification import clip_logits, cls_logits, collate_clips, random_resized_crop
from jetvit.tasks.datasets import VideoFolderClassification, sample_frames

torch.set_num_threads(1)
# A class is a colour that drifts over the clip (red towards yellow, blue towards cyan, ...): learnable per frame.
CLASSES = {"ApplyEyeMakeup": (200, 30, 30), "Basketball": (30, 30, 200), "CliffDiving": (30, 180, 30)}


def write_video_folder(root: Path, clips_per_class: int, seed: int) -> None:
    """`root/CLASS/v_CLASS_gNN/frame_K.png`, 3 to 6 frames of 32 x 40 per clip, named without zero padding."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        for c in range(clips_per_class):
            clip = root / name / f"v_{name}_g{c:02d}"
            clip.mkdir(parents=True)
            for k in range(int(rng.integers(3, 7))):
                drift = np.array([0, 12 * k, 0]) if colour[0] > 100 else np.array([0, 8 * k, 8 * k])
                pixels = np.clip(np.array(colour) + drift + rng.integers(-20, 21, (32, 40, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(clip / f"frame_{k + 1}.png")


def test_frames_are_sampled_evenly() -> None:
    # the middle frame of each of N equal segments
    assert sample_frames(10, 4) == [1, 3, 6, 8]  # segments [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10)
    assert sample_frames(9, 1) == [4]
    assert sample_frames(3, 4) == [0, 1, 2] and sample_frames(8, 8) == list(range(8))


def test_reader_orders_frames_naturally(tmp_path: Path) -> None:
    clip = tmp_path / "val" / "Jump" / "clip0"
    clip.mkdir(parents=True)
    for k in (1, 2, 10, 11):  # a plain name sort would read frame_10 before frame_2
        Image.fromarray(np.full((4, 6, 3), 10 * k, np.uint8)).save(clip / f"frame_{k}.png")
    data = VideoFolderClassification(tmp_path, split="val", frames=3)
    assert data.class_names == ("Jump",) and len(data) == 1
    frames, label = data[0]
    assert frames.shape == (3, 3, 4, 6) and label == 0
    # 4 frames, 3 wanted: indices 0, 2, 3 (the middles of [0, 4/3), [4/3, 8/3), [8/3, 4)) -> frames 1, 10, 11
    assert (frames[:, 0, 0, 0] * 255).round().tolist() == [10.0, 100.0, 110.0]
    (tmp_path / "val" / "Run" / "empty_clip").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="without frames .* Run/empty_clip"):
        VideoFolderClassification(tmp_path, split="val")
    with pytest.raises(ValueError, match="frames per clip must be >= 1"):
        VideoFolderClassification(tmp_path, split="val", frames=0)


def test_clip_logits_are_the_mean_of_the_frames(tiny_model) -> None:
    model = tiny_model()
    head = LinearClsHead(LinearClsConfig(in_dim=32, num_classes=4, n_last_blocks=2, avgpool=True))
    with torch.no_grad():
        head.linear.bias.normal_()
    clips = [(torch.rand(3, 3, 32, 32), 0), (torch.rand(1, 3, 32, 32), 1), (torch.rand(2, 3, 32, 32), 2)]
    (frames, counts), labels = collate_clips(clips)
    assert frames.shape == (6, 3, 32, 32) and counts.tolist() == [3, 1, 2] and labels.tolist() == [0, 1, 2]
    with torch.no_grad():
        got = clip_logits(model, head, model.normalize(frames), counts)
        expected = torch.stack([cls_logits(model, head, model.normalize(c)).mean(0) for c, _ in clips])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_one_crop_for_every_frame_of_a_clip() -> None:
    clip = torch.rand(3, 3, 40, 50)
    crops = random_resized_crop(clip, crop=16, scale=(0.2, 1.0), rng=random.Random(3))
    assert crops.shape == (3, 3, 16, 16)
    for t in range(3):  # each frame cropped alone with the same draws
        alone = random_resized_crop(clip[t], crop=16, scale=(0.2, 1.0), rng=random.Random(3))
        torch.testing.assert_close(crops[t], alone, rtol=0, atol=0)


@pytest.fixture(scope="module")
def video_setup(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video")
    teacher = tiny_model(depth=3)
    jetvit.save(teacher, root / "teacher")
    jetvit.save(jetvit.convert(teacher, "LWF"), root / "student")
    write_video_folder(root / "data" / "train", 3, seed=0)
    write_video_folder(root / "data" / "val", 2, seed=1)
    code = main(
        ["probe", "--task", "video", "--teacher", str(root / "teacher"), "--data", str(root / "data"),
         "--out", str(root / "probe"), "--frames", "4", "--iterations", "30", "--batch-size", "3", "--crop", "32",
         "--optimizer", "adamw", "--lr", "0.05", "--eval-short-side", "32", "--eval-crop", "32",
         "--eval-batch-size", "2", "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "teacher": root / "teacher", "student": root / "student", "probe": root / "probe"}


def test_probe_video_learns_the_clips(video_setup: dict[str, Path]) -> None:
    probe = video_setup["probe"]
    meta = json.loads((probe / "head.json").read_text())["meta"]
    results = json.loads((probe / "results.json").read_text())
    assert meta["task"] == "video" and meta["frames"] == 4
    assert meta["class_names"] == ["ApplyEyeMakeup", "Basketball", "CliffDiving"]
    assert results["val"]["num_images"] == 6  # clips
    assert results["val"]["top1"] == meta["top1"] > 1 / 3


def test_eval_video_side_by_side(video_setup: dict[str, Path], tmp_path: Path, capsys) -> None:
    s = video_setup
    args = ["eval", "--task", "video", "--model", str(s["student"]), "--teacher", str(s["teacher"]),
            "--data", str(s["root"] / "data"), "--head", str(s["probe"]), "--out", str(tmp_path), "--device", "cpu",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "clip top-1" in capsys.readouterr().out
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["metric_kind"] == "video" and report["archs"] == {"teacher": "FFF", "student": "LWF"}
    # the probe's frames, head and crops: the teacher's score is the probe's own
    probe_top1 = json.loads((s["probe"] / "results.json").read_text())["val"]["top1"]
    assert report["results"]["teacher"]["top1"] == probe_top1
    assert 0 <= report["results"]["student"]["top1"] <= 1
    base = ["probe", "--teacher", str(s["teacher"]), "--data", str(s["root"] / "data"), "--out", str(tmp_path / "x")]
    assert main([*base, "--task", "cls", "--frames", "4"]) == 2
    assert "--frames is for --task video" in capsys.readouterr().err
