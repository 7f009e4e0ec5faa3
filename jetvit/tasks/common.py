"""What the task evaluations share: the model's device, bf16 autocast on CUDA, short-side resizing, and the loop that
scores a model's predictions over a dataset one image at a time."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.tasks.config import Recipe


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (DINOv3 runs in bf16), plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resize_short_side(image: Tensor, short: int, *, multiple: int = 1) -> Tensor:
    """(B, C, H, W) -> bilinear resize so min(H, W) == short (aspect kept), both sides rounded up to `multiple`."""
    h, w = image.shape[-2:]
    s = short / min(h, w)
    nh = max(multiple, math.ceil(round(h * s) / multiple) * multiple)
    nw = max(multiple, math.ceil(round(w * s) / multiple) * multiple)
    if (nh, nw) == (h, w):
        return image
    return F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)


def evaluate_dataset(
    dataset: Any,
    predict: Callable[[Tensor], Tensor],
    metric: Any,
    *,
    desc: str,
    progress: bool,
    on_prediction: Callable[[int, Tensor, Any, Tensor], None] | None = None,
) -> dict[str, Any]:
    """Score every sample (image (3, H, W), target) of `dataset`: `predict(image)` gives the prediction on the CPU (a
    map (H, W), or an image's detections), `metric.update(prediction, target)` takes it. Returns `metric.compute()`
    plus "seconds".

    on_prediction(index, image, target, prediction) is called per image, e.g. to save a figure.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, dynamic_ncols=True):
        image, target = dataset[i]
        pred = predict(image)
        metric.update(pred, target)
        if on_prediction is not None:
            on_prediction(i, image, target, pred)
    result = metric.compute()
    result["seconds"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------------------------------
# A probe head on disk: `head.safetensors` + `head.json` ({"config": the head's config fields, "meta": ...})

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


def save_head(head: nn.Module, directory: str | os.PathLike, *, fmt: str, meta: dict[str, Any] | None = None) -> Path:
    """Write a probe head's weights and config atomically; `fmt` is recorded in the safetensors metadata."""
    from safetensors.torch import save_file

    from jetvit.io import atomic_write, atomic_write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    atomic_write(directory / HEAD_WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": fmt}))
    atomic_write_json(directory / HEAD_CONFIG, {"config": head.cfg.to_dict(), "meta": meta or {}})
    return directory


def load_head(
    path: str | os.PathLike, head_cls: type[nn.Module], config_cls: Any, *, what: str, hint: str
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a head written by `save_head` from its directory (or its `head.safetensors`): (head in eval mode, meta).
    `what` names the kind of head in errors ("segmentation head"), `hint` how to make one."""
    from safetensors.torch import load_file

    from jetvit.io import load_state_dict_strict

    path = Path(path)
    directory = path.parent if path.suffix == ".safetensors" else path
    cfg_path, weights = directory / HEAD_CONFIG, directory / HEAD_WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"no {what} at {path}: {p} is missing ({hint})")
    try:
        info = json.loads(cfg_path.read_text())
        cfg = config_cls.from_dict(info["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path} is not a {what} config: {e}") from e
    head = head_cls(cfg)
    load_state_dict_strict(head, load_file(str(weights)), source=str(weights))
    return head.eval(), info.get("meta", {})


def fit_probe(
    head: nn.Module,
    dataset: Any,
    cfg: Recipe,
    *,
    augment: Callable[..., tuple[Any, Any]],
    loss_of: Callable[[Any, Tensor], Tensor | None],
    opt: torch.optim.Optimizer,
    collate_fn: Callable | None = None,
    desc: str,
    progress: bool,
    log: Callable[[dict[str, Any]], None] | None,
) -> nn.Module:
    """The probes' training loop: `cfg.iterations` batches of `cfg.batch_size` samples of `dataset` drawn with
    replacement and passed through `augment` (`AugmentedStream`, seeded by `cfg.seed`), collated by `collate_fn`,
    moved to the head's device; the input a tensor or a tuple of tensors (a batch of clips: frames and counts).
    `loss_of(input, label)` gives the loss, or None to skip a batch's update (a non-finite loss skips it too). The
    learning rate warms up linearly for `cfg.warmup` steps (at most a tenth of the iterations, so that short runs
    still decay), then follows a cosine to zero. `log`, if given, receives {"step", "loss", "lr"} every
    `cfg.log_every` steps. Returns the head in eval mode."""
    from tqdm import tqdm

    from jetvit.schedule import lr_factor

    loader = torch.utils.data.DataLoader(
        AugmentedStream(dataset, seed=cfg.seed, augment=augment),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
    )
    batches = iter(loader)
    iterations = cfg.iterations
    warmup = min(cfg.warmup, iterations // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps=iterations, warmup=warmup))

    device = next(head.parameters()).device
    bar = tqdm(range(iterations), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        inputs, label = next(batches)
        if isinstance(inputs, tuple):
            inputs = tuple(t.to(device, non_blocking=True) for t in inputs)
        else:
            inputs = inputs.to(device, non_blocking=True)
        loss = loss_of(inputs, label.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        if loss is not None and torch.isfinite(loss):
            loss.backward()
            opt.step()
        sched.step()
        if loss is not None and (step % cfg.log_every == 0 or step == iterations - 1):
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log is not None:
                log({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0]})
    return head.eval()


class AugmentedStream(torch.utils.data.IterableDataset):
    """An endless stream of `augment(image, label, rng=rng)` of samples of `dataset` drawn with replacement, seeded
    per worker by `seed` (what the probes train on)."""

    def __init__(self, dataset: Any, *, seed: int, augment: Callable[..., tuple[Any, Any]]) -> None:
        self.dataset, self.seed, self.augment = dataset, seed, augment

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            image, label = self.dataset[rng.randrange(len(self.dataset))]
            yield self.augment(image, label, rng=rng)
