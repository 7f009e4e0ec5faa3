"""Latency tables (`jetvit.search.latency.LatencyTable`) for a students' config: measured on a device, or predicted by
the cost model, and cached.

Measured (`measure_table`): one model holding a block of every kind is run part by part on seeded inputs at the
table's resolution: the parts outside the blocks (patch embedding with the position terms, final norm) and each
kind's block on the tokens the embedding gives, all interleaved, `repeats` times, after warm-up; a part's time is
its median. The additive model is then checked end to end: the uniform architectures and one mixed one are timed
whole, interleaved, and kept in the table's `check` beside what the table predicts for them.

Predicted (`predict_table`): `jetvit.bench.cost.predict` on the uniform architectures (a block's time is the mean of
its kind's rows; the embedding and head rows are the fixed part), checked against the cost model's own prediction of a
mixed architecture.

Cache: a table is written to `<cache>/latency/<key>.json` (`cache_dir`: `$JETVIT_CACHE`, else `~/.cache/jetvit`),
the key a hash of the students' shapes and the setting (device and its name, dtype, batch, resolution, threads,
source, torch version), and read back by `table_for` instead of measuring again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from jetvit.bench.harness import DTYPES
from jetvit.model import ARCH_LETTERS, HybridViT, ViTConfig
from jetvit.search.latency import LatencyTable


def cache_dir() -> Path:
    """Where tables are cached: `$JETVIT_CACHE/latency`, else `~/.cache/jetvit/latency`."""
    root = os.environ.get("JETVIT_CACHE") or Path.home() / ".cache" / "jetvit"
    return Path(root) / "latency"


def _shape_key(cfg: ViTConfig) -> dict[str, Any]:
    """What of the config decides the speed of the students (everything but the architecture and the head labels)."""
    data = dataclasses.asdict(cfg)
    data.pop("arch", None)
    return data


def setting(
    cfg: ViTConfig,
    *,
    source: str,
    device: str,
    dtype: str,
    resolution: tuple[int, int],
    batch: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """The setting a table holds for; its `key` names the cache file."""
    if source not in ("measured", "predicted"):
        raise ValueError(f"latency source {source!r} is not one of measured, predicted")
    if dtype not in DTYPES:
        raise ValueError(f"latency dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if batch < 1:
        raise ValueError(f"latency batch must be >= 1, got {batch}")
    s: dict[str, Any] = {
        "source": source,
        "device": device,
        "dtype": dtype,
        "batch": batch,
        "resolution": [int(resolution[0]), int(resolution[1])],
        "torch": torch.__version__.split("+")[0],
    }
    if source == "measured":
        s["device_name"] = _device_name(device)
        s["threads"] = threads or torch.get_num_threads()
    else:
        from jetvit.bench.cost import DEVICES

        if device not in DEVICES:
            raise ValueError(f"unknown cost-model device {device!r}; choose one of {', '.join(DEVICES)}")
        s["device_name"] = DEVICES[device].name + " (cost model)"
    blob = json.dumps({"shapes": _shape_key(cfg), **s}, sort_keys=True, default=str)
    s["key"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return s


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    from jetvit.bench.harness import _cpu_model

    return f"{_cpu_model()} ({os.cpu_count()} CPUs)"


def _mixed(cfg: ViTConfig, kinds: str) -> str:
    """A mixed architecture for the end-to-end check: the kinds in turn."""
    return "".join(kinds[i % len(kinds)] for i in range(cfg.depth))


def measure_table(
    cfg: ViTConfig,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    resolution: tuple[int, int],
    batch: int = 1,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    kinds: str = ARCH_LETTERS,
    check: bool = True,
) -> LatencyTable:
    """Time the students of `cfg` part by part on `device` (module docstring); `check`: also time whole
    architectures against the table."""
    from jetvit.bench.harness import forward_runner, summarize, time_interleaved

    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads:
        torch.set_num_threads(threads)
    s = setting(cfg, source="measured", device=device, dtype=dtype, resolution=resolution, batch=batch, threads=threads)
    torch_dtype = DTYPES[dtype]
    # One block of each kind in a model of that many blocks: a block's time does not depend on the depth around it.
    probe_arch = kinds
    torch.manual_seed(0)
    probe_cfg = dataclasses.replace(cfg, depth=len(kinds), arch=probe_arch)
    model = HybridViT(probe_cfg).to(device=device, dtype=torch_dtype).eval()
    model.grid_size(*resolution)  # a clear error for a size the model cannot take
    x = torch.randn(batch, cfg.in_chans, *resolution, device=device, dtype=torch_dtype)
    kind = torch.device(device).type  # the timer synchronises "cuda" (any index)
    times = _time_parts(model, x, kinds, probe_arch, repeats=repeats, warmup=warmup, device=kind)
    table = LatencyTable(
        blocks={k: summarize(times[k])["median"] for k in kinds},
        fixed=summarize(times["fixed"])["median"],
        setting={**s, "repeats": repeats},
    )
    del model
    if check:
        archs = [k * cfg.depth for k in kinds] + [_mixed(cfg, kinds)]
        models = {}
        for a in archs:
            torch.manual_seed(0)
            models[a] = HybridViT(dataclasses.replace(cfg, arch=a)).to(device=device, dtype=torch_dtype).eval()

        runners = {a: forward_runner(m) for a, m in models.items()}
        times = time_interleaved(runners, x, repeats=repeats, warmup=warmup, device=kind)
        table.check = {a: {"measured": summarize(times[a])["median"], "predicted": table.predict(a)} for a in archs}
    return table


def _time_parts(
    model: HybridViT, x: torch.Tensor, kinds: str, arch: str, *, repeats: int, warmup: int, device: str
) -> dict[str, list[float]]:
    """Milliseconds of the parts outside the blocks ("fixed") and of a block of each kind (on the embedding's
    tokens), interleaved."""
    from jetvit.bench.harness import _sync, time_interleaved

    with torch.inference_mode():
        tokens, layout = model.prepare_tokens(x)
        _sync(device)
        runners = {"fixed": lambda _: model._teacher_order(model.norm(model.prepare_tokens(x)[0]))}
        for k in kinds:
            blk = model.blocks[arch.index(k)]
            runners[k] = lambda _, blk=blk: blk(tokens, layout)
        return time_interleaved(runners, x, repeats=repeats, warmup=warmup, device=device)


def predict_table(
    cfg: ViTConfig,
    *,
    device: str = "h100",
    dtype: str = "bf16",
    resolution: tuple[int, int],
    batch: int = 1,
    mode: str = "eager",
    kinds: str = ARCH_LETTERS,
) -> LatencyTable:
    """The table from the cost model (`jetvit.bench.cost.predict`) for `device` (a key of its `DEVICES`)."""
    from jetvit.bench.cost import predict

    s = setting(cfg, source="predicted", device=device, dtype=dtype, resolution=resolution, batch=batch)
    H, W = resolution
    blocks, fixed = {}, []
    for k in kinds:
        rep = predict(dataclasses.replace(cfg, arch=k * cfg.depth), H, W, device=device, dtype=dtype, mode=mode,
                      batch=batch)  # fmt: skip
        rows = [r.ms for r in rep.rows if r.kind == k]
        blocks[k] = sum(rows) / len(rows)
        fixed.append(sum(r.ms for r in rep.rows if r.kind == ""))
    table = LatencyTable(blocks=blocks, fixed=sum(fixed) / len(fixed), setting={**s, "mode": mode})
    mixed = _mixed(cfg, kinds)
    rep = predict(dataclasses.replace(cfg, arch=mixed), H, W, device=device, dtype=dtype, mode=mode, batch=batch)
    table.check = {mixed: {"measured": rep.ms, "predicted": table.predict(mixed)}}  # the cost model's whole forward
    return table


def table_for(
    cfg: ViTConfig,
    *,
    source: str = "measured",
    device: str = "cpu",
    dtype: str = "fp32",
    resolution: tuple[int, int],
    batch: int = 1,
    threads: int | None = None,
    repeats: int = 5,
    cache: bool = True,
    refresh: bool = False,
) -> tuple[LatencyTable, bool]:
    """The table for this setting: from the cache when there (and not `refresh`), else measured or predicted and
    cached (when `cache`). Returns (table, whether it came from the cache)."""
    from jetvit.io import atomic_write_json, read_json

    s = setting(cfg, source=source, device=device, dtype=dtype, resolution=resolution, batch=batch, threads=threads)
    path = cache_dir() / f"{s['key']}.json"
    if cache and not refresh and path.is_file():
        try:
            return LatencyTable.from_dict(read_json(path)), True
        except ValueError:
            pass  # a damaged cache file is measured again and replaced
    if source == "measured":
        table = measure_table(cfg, device=device, dtype=dtype, resolution=resolution, batch=batch, threads=threads,
                              repeats=repeats)  # fmt: skip
    else:
        table = predict_table(cfg, device=device, dtype=dtype, resolution=resolution, batch=batch)
    if cache:
        atomic_write_json(path, table.to_dict())
    return table, False
