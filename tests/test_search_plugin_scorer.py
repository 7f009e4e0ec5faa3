"""A scorer plugged in through `score.scorer: "module:factory"`; the pipeline tests also load this module as one.

As a plugin (`test_search_plugin_scorer:factory`, with `tests/` on PYTHONPATH) it scores like the built-in
feature MSE, appends every architecture it scores to `$JETVIT_TEST_SCORE_LOG` (`@rank` after it under torchrun), and,
when `$JETVIT_TEST_DIE_AFTER=n` is set, kills its own process (no cleanup, like SIGKILL) before its n-th score.
"""

from __future__ import annotations

import os

import pytest
import torch

from jetvit.search.scorers import FeatureScorer, build_scorer


class LoggingScorer:
    def __init__(self, inner: FeatureScorer) -> None:
        self.inner, self.name, self.calls = inner, "plugin_" + inner.name, 0

    def __call__(self, model) -> float:
        self.calls += 1
        die_after = int(os.environ.get("JETVIT_TEST_DIE_AFTER", "0"))
        if die_after and self.calls >= die_after:
            os._exit(137)
        value = self.inner(model)
        log = os.environ.get("JETVIT_TEST_SCORE_LOG")
        if log:
            with open(log, "a") as f:
                # Which model (a supernet's candidate sets, or a plain model's kinds) and which path.
                choices = "/".join(getattr(b, "choices", b.kind) for b in model.blocks)
                rank = f"@{os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
                f.write(f"{choices}:{model.arch}{rank}\n")
        return value


def factory(*, teacher, device, images, targets, metric: str = "mse", **_):
    return LoggingScorer(FeatureScorer(teacher, images, targets, metric=metric, device=device))


class ConstantScorer:
    """Every model scores the same, the teacher included: every candidate matches the teacher."""

    name = "constant"

    def __call__(self, model) -> float:
        return 1.0


def constant(**_):
    return ConstantScorer()


def test_builtin_and_plugin_scorers_agree_and_teacher_is_perfect(tiny_model):
    teacher = tiny_model()
    images = torch.randn(3, 3, 32, 32)
    kw = dict(teacher=teacher, images=images, targets=[1, 3], batch_size=2, device=torch.device("cpu"))
    mse = build_scorer("feature_mse", **kw)
    cos = build_scorer("feature_cosine", **kw)
    plugin = build_scorer("test_search_plugin_scorer:factory", **kw)
    assert mse(teacher) == 0.0 and cos(teacher) == pytest.approx(1.0, abs=1e-6)
    other = tiny_model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert mse(other) < 0 and cos(other) < 1
    assert plugin(other) == pytest.approx(mse(other), rel=1e-5) and plugin.name == "plugin_neg_feature_mse"


def test_scorer_spec_errors(tiny_model):
    teacher = tiny_model()
    kw = dict(teacher=teacher, images=torch.randn(1, 3, 32, 32), targets=[3], batch_size=1, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="'feature_l1' is not one of"):
        build_scorer("feature_l1", **kw)
    with pytest.raises(ValueError, match="cannot import 'nope'"):
        build_scorer("jetvit.search.scorers:nope", **kw)
    with pytest.raises(ValueError, match="score.options"):
        build_scorer("feature_mse", options={"k": 1}, **kw)
