"""Depth losses (`jetvit.train.losses`): hand-worked values, invariances, masks, and a pseudo-label fine-tune with
`distill.depth_loss=ssi_gm` through the real CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import jetvit
from jetvit.cli import main
from jetvit.config import load_config
from jetvit.train.losses import depth_loss_fn, gradient_matching, normalize_affine, ssi_gm, ssi_mae, ssi_mse

# Two 2 x 3 maps worked by hand (the plain-Python reference below recomputes every number).
PRED = [[1.0, 2.0, 4.0], [8.0, 3.0, 0.0]]  # sorted 0 1 2 3 4 8: t = (2 + 3) / 2 = 2.5, s = 12 / 6 = 2
TARGET = [[0.0, 1.0, 1.0], [2.0, 5.0, 3.0]]  # sorted 0 1 1 2 3 5: t = (1 + 2) / 2 = 1.5, s = 8 / 6 = 4 / 3


# --- a plain-Python reference: lists of rows, None for an invalid pixel ---------------------------------------


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _normalise(rows: list[list[float | None]]) -> list[list[float | None]]:
    vals = [x for row in rows for x in row if x is not None]
    t = _median(vals)
    s = sum(abs(x - t) for x in vals) / len(vals)
    return [[None if x is None else (x - t) / s for x in row] for row in rows]


def _ssi(pred: list[list[float | None]], target: list[list[float | None]]) -> float:
    p, y = _normalise(pred), _normalise(target)
    diffs = [abs(a - b) for rp, ry in zip(p, y) for a, b in zip(rp, ry) if b is not None]
    return sum(diffs) / len(diffs)


def _gm(p: list[list[float | None]], y: list[list[float | None]], scales: int = 4) -> float:
    total = 0.0
    for k in range(scales):
        step = 2**k
        rows = zip(p[::step], y[::step])
        r = [[None if b is None else a - b for a, b in zip(rp[::step], ry[::step])] for rp, ry in rows]  # R at scale k
        grads, valid = [], 0
        for i, row in enumerate(r):
            for j, v in enumerate(row):
                if v is None:
                    continue
                valid += 1
                if j + 1 < len(row) and row[j + 1] is not None:
                    grads.append(abs(row[j + 1] - v))
                if i + 1 < len(r) and r[i + 1][j] is not None:
                    grads.append(abs(r[i + 1][j] - v))
        total += sum(grads) / valid
    return total


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)[None]  # (1, H, W)


# --- values -------------------------------------------------------------------------------------------------


def test_the_hand_worked_example():
    assert _median([x for r in PRED for x in r]) == 2.5 and _median([x for r in TARGET for x in r]) == 1.5
    p, y = _normalise(PRED), _normalise(TARGET)
    assert p[0] == [-0.75, -0.25, 0.75] and y[0] == [-1.125, -0.375, -0.375]  # (d - t) / s: s = 2 and 4 / 3
    assert _ssi(PRED, TARGET) == pytest.approx(8.75 / 6)
    # R = p^ - y^ = [[.375, .125, 1.125], [2.375, -2.375, -2.375]]: scale 0 sums 6 (x) + 8 (y) over 6 pixels,
    # scale 1 keeps [.375, 1.125]: 0.75 over 2 pixels; scales 2 and 3 are one pixel, no gradient.
    assert _gm(p, y) == pytest.approx(14 / 6 + 0.75 / 2)


def test_affine_normalisation_and_ssi_against_hand_values():
    pred, target = _t(PRED), _t(TARGET)
    valid = torch.ones_like(pred, dtype=torch.bool)
    torch.testing.assert_close(normalize_affine(pred, valid).double(), _t(_normalise(PRED)), rtol=1e-6, atol=1e-6)
    assert ssi_mae(pred, target).item() == pytest.approx(_ssi(PRED, TARGET), rel=1e-6)
    odd = [[3.0, -1.0, 7.0]]  # odd count: the middle value, t = 3, s = 8 / 3
    got = normalize_affine(_t(odd), torch.ones(1, 1, 3, dtype=torch.bool))
    torch.testing.assert_close(got, _t(_normalise(odd)), rtol=1e-6, atol=1e-6)


def test_gradient_matching_and_ssi_gm_against_hand_values():
    pred, target = _t(PRED), _t(TARGET)
    p, y = _normalise(PRED), _normalise(TARGET)
    assert gradient_matching(_t(p), _t(y)).item() == pytest.approx(_gm(p, y), rel=1e-6)
    assert gradient_matching(_t(p), _t(y), scales=1).item() == pytest.approx(14 / 6, rel=1e-6)
    expected = _ssi(PRED, TARGET) + 2.0 * _gm(p, y)
    assert ssi_gm(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert ssi_gm(pred, target, gradient_weight=0.5).item() == pytest.approx(_ssi(PRED, TARGET) + 0.5 * _gm(p, y))
    assert depth_loss_fn("ssi_gm", gradient_weight=2.0)(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert depth_loss_fn("ssi_mse") is ssi_mse
    with pytest.raises(ValueError, match="silog"):
        depth_loss_fn("silog")


def test_a_batch_is_reduced_over_all_valid_pixels():
    """MiDaS's batch-based reduction: with equal pixel counts, the mean of the images' losses."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 8, 10, generator=g), torch.rand(3, 8, 10, generator=g)
    each = [ssi_mae(pred[i : i + 1], target[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(ssi_mae(pred, target), torch.stack(each).mean())
    each = [gradient_matching(pred[i : i + 1], target[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(gradient_matching(pred, target), torch.stack(each).mean())


# --- invariances --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, shift", [(3.0, 0.5), (0.01, -7.0), (250.0, 1e3)])
def test_ssi_losses_ignore_a_positive_scale_and_a_shift_of_the_prediction(scale, shift):
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(2, 2, 16, 12, generator=g, dtype=torch.float64)  # float64: the test of exactness
    moved = scale * pred + shift
    for loss in (ssi_mae, ssi_gm, ssi_mse):
        torch.testing.assert_close(loss(moved, target), loss(pred, target), rtol=1e-5, atol=1e-6)
    assert ssi_mae(pred, target) > 0.1
    # A prediction that is an affine map of the target costs nothing.
    assert ssi_mae(scale * target + shift, target) < 1e-5 and ssi_gm(scale * target + shift, target) < 1e-5


def test_gradient_matching_ignores_a_constant_offset():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(2, 9, 13, generator=g), torch.rand(2, 9, 13, generator=g)
    base = gradient_matching(pred, target)
    assert base > 0.1
    torch.testing.assert_close(gradient_matching(pred + 4.0, target), base)
    torch.testing.assert_close(gradient_matching(pred, target - 2.5), base)
    assert gradient_matching(target + 1.0, target) < 1e-6


# --- masks --------------------------------------------------------------------------------------------------


def test_invalid_pixels_are_left_out():
    mask = torch.tensor([[[True, True, False], [True, True, True]]])
    pred, target = _t(PRED), _t(TARGET)
    hidden = [[a if m else None for a, m in zip(r, mr)] for r, mr in zip(TARGET, mask[0].tolist())]
    pred_hidden = [[a if m else None for a, m in zip(r, mr)] for r, mr in zip(PRED, mask[0].tolist())]
    assert ssi_mae(pred, target, mask=mask).item() == pytest.approx(_ssi(pred_hidden, hidden), rel=1e-6)
    p, y = _normalise(pred_hidden), _normalise(hidden)
    p_t = torch.tensor([[0.0 if v is None else v for v in r] for r in p], dtype=torch.float64)[None]
    y_t = torch.tensor([[0.0 if v is None else v for v in r] for r in y], dtype=torch.float64)[None]
    assert gradient_matching(p_t, y_t, mask=mask).item() == pytest.approx(_gm(p, y), rel=1e-6)
    assert ssi_gm(pred, target, mask=mask).item() == pytest.approx(_ssi(pred_hidden, hidden) + 2 * _gm(p, y), rel=1e-6)
    # Whatever sits at an invalid pixel changes nothing.
    garbage_p, garbage_t = pred.clone(), target.clone()
    garbage_p[0, 0, 2], garbage_t[0, 0, 2] = 1e6, -3e5
    for loss in (ssi_mae, ssi_gm, gradient_matching):
        assert loss(garbage_p, garbage_t, mask=mask).item() == pytest.approx(loss(pred, target, mask=mask).item())
    with pytest.raises(ValueError, match="mask of shape"):
        ssi_mae(pred, target, mask=mask[:, :, :2])


def test_degenerate_maps_give_finite_losses_and_gradients():
    """A constant map (s = 0) and an image without valid pixels: finite loss, finite gradients."""
    pred = torch.rand(2, 6, 6, requires_grad=True)
    target = torch.rand(2, 6, 6)
    target[0] = 3.0
    mask = torch.ones(2, 6, 6, dtype=torch.bool)
    mask[1] = False
    loss = ssi_gm(pred, target, mask=mask)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().sum() == 0  # the image without valid pixels teaches nothing


# --- config and the CLI -------------------------------------------------------------------------------------


def test_config_selects_and_checks_the_depth_loss():
    assert load_config("tiny", ["teacher=x"]).distill.depth_loss == "ssi_mse"  # the previous behaviour by default
    da = load_config("depth_anything_v2")
    assert (da.distill.depth_loss, da.distill.gradient_weight) == ("ssi_gm", 2.0)
    assert [s.size for s in da.finetune.stages] == [(1022, 1022)] and da.finetune.depth_weight > 0
    with pytest.raises(ValueError, match="distill.depth_loss 'silog'"):
        load_config("tiny", ["teacher=x", "distill.depth_loss=silog"])
    with pytest.raises(ValueError, match="distill.gradient_weight"):
        load_config("tiny", ["teacher=x", "distill.gradient_weight=-1.0"])


def test_pseudo_label_finetune_with_ssi_gm_through_the_cli(tiny_depth_model, tmp_path):
    """`jetvit distill` on a tiny Depth-Anything-V2 teacher: the teacher's pseudo-labels train the student's DPT head
    with Depth Anything's losses."""
    teacher = tiny_depth_model()
    teacher_dir = jetvit.save(teacher, tmp_path / "teacher")
    out = tmp_path / "run"
    stages = "finetune.stages=[{resolution: 32, steps: 3, batch_size: 2, lr: 1.0e-3}]"
    rc = main([
        "distill", "--config", "tiny", "--arch", "LWLF", "--set", f"teacher={teacher_dir}", "--set", stages,
        "--set", "distill.targets=dpt", "--set", "distill.depth_loss=ssi_gm", "--set", "finetune.depth_weight=1.0",
        "--set", "run.log_every=1", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    assert "depth_loss: ssi_gm" in (out / "config.yaml").read_text()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("phase") == "finetune" and "loss" in r]
    assert len(steps) == 3
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert all(r["loss"] > r["feature_loss"] for r in steps)  # the depth term is in the loss
    student = jetvit.load(out / "model")
    untrained_head = copy.deepcopy(student)  # the trained backbone with the head it inherited
    untrained_head.depth_head.load_state_dict(teacher.depth_head.state_dict())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after, before = student.eval().predict_depth(x), untrained_head.eval().predict_depth(x)
    assert after.shape == (1, 32, 32) and torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-4  # the pseudo-label loss trained the depth head
