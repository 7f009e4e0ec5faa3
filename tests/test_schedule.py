"""lr_factor against values worked out by hand: 10 steps, 2 of them warm-up, so t = (step - 2) / 8 afterwards."""

from __future__ import annotations

import pytest

from jetvit.schedule import lr_factor


def test_warmup_is_linear_from_one_step() -> None:
    assert [lr_factor(s, steps=10, warmup=2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(0, steps=10) == 1.0  # no warm-up: the schedule starts at the base lr


def test_cosine_linear_constant() -> None:
    # step 6: t = 0.5, cos(pi / 2) = 0
    assert lr_factor(6, steps=10, warmup=2) == pytest.approx(0.5)
    assert lr_factor(6, steps=10, warmup=2, final_ratio=0.2) == pytest.approx(0.2 + 0.4 * 1)
    assert lr_factor(4, steps=10, warmup=2) == pytest.approx(0.5 * (1 + 2**-0.5))  # t = 0.25
    assert lr_factor(6, steps=10, warmup=2, schedule="linear", final_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(9, steps=10, warmup=2, schedule="constant") == 1.0


def test_held_at_the_final_ratio_past_the_end() -> None:
    for step in (10, 25):
        assert lr_factor(step, steps=10, warmup=2, final_ratio=0.1) == pytest.approx(0.1)
        assert lr_factor(step, steps=10, warmup=2, schedule="linear", final_ratio=0.1) == pytest.approx(0.1)


def test_unknown_schedule_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="'step'.*cosine, linear, constant"):
        lr_factor(0, steps=10, schedule="step")


def test_base_rounds_as_lr_times_step_over_warmup() -> None:
    # 7e-4 * 1 / 40 and 7e-4 * (1 / 40) differ in the last bit: `base` keeps the first, the recorded teacher's lr.
    assert lr_factor(0, steps=800, warmup=40, base=7e-4) == 7e-4 * 1 / 40
    assert lr_factor(0, steps=800, warmup=40, base=7e-4) != 7e-4 * lr_factor(0, steps=800, warmup=40)
    assert lr_factor(420, steps=800, warmup=40, base=7e-4) == pytest.approx(3.5e-4)  # t = 380 / 760
