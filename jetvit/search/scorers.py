"""Scorers for the beam search: `scorer(model) -> float`, higher is better, with a `.name`.

Built in: feature fidelity on held-out images, i.e. how closely the candidate reproduces the teacher's
features of the distillation target blocks:

- `feature_mse`: the negative distillation loss (MSE over tokens, mean over target blocks);
- `feature_cosine`: the mean cosine similarity of student and teacher tokens.

The teacher's features are computed once, when the scorer is built, and kept where they are cheapest: on a GPU in
bf16 (no host copy per process, half the memory, no transfer per candidate), on the CPU in fp32.

Downstream scorers (segmentation mIoU, depth accuracy, from `jetvit.tasks`) plug in through the config as
`score.scorer: "package.module:factory"`. The factory is called with those of the keywords `teacher` (the frozen
teacher), `device`, `images` (the held-out images, (n, 3, H, W), normalised), `targets` (the distillation blocks)
and `autocast` that its signature names, plus the entries of `score.options`; an option the factory does not take
is an error naming it, never dropped. It returns any callable `scorer(model) -> float` (higher is better) with a
`.name`. The model it is given is the supernet with the candidate path active: a `HybridViT` in every respect the
scorer can see.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BUILTIN = ("feature_mse", "feature_cosine")


class Scorer(Protocol):
    name: str

    def __call__(self, model: nn.Module) -> float: ...


class FeatureScorer:
    """Feature fidelity of a model to the teacher on fixed images (n, 3, H, W), at blocks `targets`."""

    def __init__(
        self,
        teacher: nn.Module,
        images: Tensor,
        targets: list[int],
        *,
        metric: str = "mse",
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        autocast: Callable[[], Any] | None = None,
    ) -> None:
        if metric not in ("mse", "cosine"):
            raise ValueError(f"feature scorer metric must be 'mse' or 'cosine', got {metric!r}")
        self.metric, self.targets, self.batch_size = metric, list(targets), batch_size
        self.name = "neg_feature_mse" if metric == "mse" else "feature_cosine"
        self.device = torch.device(device)
        self.autocast = autocast
        self.images = images
        keep = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.teacher_feats = [[f.to(keep) for f in feats] for feats in self._features(teacher)]

    def _features(self, model: nn.Module) -> list[list[Tensor]]:
        was_training = model.training
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(self.images), self.batch_size):
                x = self.images[i : i + self.batch_size].to(self.device)
                with self.autocast() if self.autocast is not None else torch.autocast("cpu", enabled=False):
                    out.append([f.float() for f in model.token_features(x, self.targets)])  # each (B, N, D)
        model.train(was_training)
        return out

    def __call__(self, model: nn.Module) -> float:
        total, count = 0.0, 0
        for s_feats, t_feats in zip(self._features(model), self.teacher_feats):
            for s, t in zip(s_feats, t_feats):  # each (B, N, D)
                t = t.to(s.device, s.dtype)
                if self.metric == "mse":
                    total += F.mse_loss(s, t, reduction="sum").item() / (s.shape[1] * s.shape[2])
                else:
                    total += F.cosine_similarity(s, t, dim=-1).mean(dim=1).sum().item()
                count += s.shape[0]
        value = total / count
        return 0.0 - value if self.metric == "mse" else value  # 0.0 - x: a perfect score is 0.0, not -0.0


def build_scorer(
    spec: str,
    *,
    teacher: nn.Module,
    images: Tensor,
    targets: list[int],
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
    options: dict[str, Any] | None = None,
    key: str = "score.options",
) -> Scorer:
    """A scorer from its config name: "feature_mse", "feature_cosine" or "package.module:factory". key: the config
    key that `options` came from, for the errors."""
    options = dict(options or {})
    if spec in BUILTIN:
        if options:
            raise ValueError(f"{key} {sorted(options)} are not used by the built-in scorer {spec!r}")
        metric = spec.removeprefix("feature_")
        return FeatureScorer(
            teacher, images, targets, metric=metric, batch_size=batch_size, device=device, autocast=autocast
        )
    if ":" not in spec:
        raise ValueError(f"score.scorer {spec!r} is not one of {', '.join(BUILTIN)} or 'package.module:factory'")
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"score.scorer {spec!r}: cannot import {attr!r} from {module_name!r} ({e})") from e
    provided = {"teacher": teacher, "device": device, "images": images, "targets": targets, "autocast": autocast}
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in options if k not in params and not takes_any)
    if unknown:
        accepted = sorted(k for k in params if k not in provided)
        raise ValueError(f"{key} {unknown} are not options of {spec!r}; it takes: {', '.join(accepted)}")
    kwargs = {k: v for k, v in provided.items() if k in params or takes_any}
    scorer = factory(**kwargs, **options)
    if not callable(scorer) or not hasattr(scorer, "name"):
        raise ValueError(f"score.scorer {spec!r} returned {scorer!r}, not a callable with a .name")
    return scorer
