"""Teacher-vs-hybrid benchmark: latency, throughput and peak memory, measured in the same run, interleaved.

Method (the usual mistakes, avoided on purpose):

- warm-up calls before any timing (first calls pay for allocation, oneDNN primitive creation, compilation);
- the device is synchronised around every timed call, with CUDA events on GPU;
- teacher and hybrid calls alternate within every repeat (and the order flips each repeat), so drifting load on a
  shared machine hits both alike; the spread of the speedup is taken over these per-repeat pairs;
- only the backbone forward (optionally with the depth head) is timed: no pre/post-processing, no host copies;
- peak memory: on CUDA `max_memory_allocated` over one forward above what was allocated before it; on CPU a fresh
  subprocess per measurement (see `jetvit.bench.memory`), because torch's CPU allocations are invisible to
  `tracemalloc` and an in-process RSS peak is polluted by everything measured before.

The ideal speedup comes from the model's own cost model, `model.flops(H, W)["total"]`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from jetvit.model import HybridViT

logger = logging.getLogger(__name__)
Runner = Callable[[Tensor], Any]


@dataclass
class BenchOptions:
    """What to measure and how."""

    resolutions: list[tuple[int, int]]
    batch: int | None = None  # throughput batch; None = the largest fitting one on CUDA, batch 1 on CPU
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast)
    compile: bool = False
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    memory: bool = True
    head: bool = False  # time predict_depth (backbone + DPT head) instead of the backbone alone
    sdpa_backend: str | None = None  # CUDA: "flash" | "cudnn" | "efficient" | "math"; None lets PyTorch pick
    threads: int | None = None  # CPU threads (torch.set_num_threads); None keeps the default
    max_batch: int = 1024
    clock: str = "wall"  # CPU only: "wall" (perf_counter) | "process" (CPU time of this process; see time_interleaved)

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False on this machine")
        if self.sdpa_backend not in (None, *SDPA_BACKENDS):
            raise ValueError(f"sdpa_backend must be one of {list(SDPA_BACKENDS)}, got {self.sdpa_backend!r}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need repeats >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.clock not in ("wall", "process") or (self.clock == "process" and self.device != "cpu"):
            raise ValueError(f"clock must be 'wall', or 'process' on CPU, got {self.clock!r} on {self.device}")
        if not self.resolutions:
            raise ValueError("give at least one resolution (--res HxW)")


SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def parse_res(text: str) -> tuple[int, int]:
    """'1024x2048' (height x width) or '1024' (square) -> (1024, 2048)."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"resolution {text!r} is not HxW (e.g. 1024x2048) or a single side (e.g. 1024)")
    return hw  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Running and timing


def make_runner(model: HybridViT, opts: BenchOptions) -> Runner:
    """The timed call: inference mode, bf16 autocast when asked, the chosen SDPA backend, optionally compiled
    (whole backbone, `fullgraph=True`: a graph break is an error, not a silent slowdown)."""
    fn: Callable[[Tensor], Any] = model.predict_depth if opts.head else model.forward
    if opts.compile:
        import torch._dynamo as dynamo

        # Teacher and hybrid share HybridViT.forward's code object, and every (resolution, batch) is a new shape:
        # without a high limit Dynamo would silently fall back to eager after a few of them.
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 256)
        dynamo.config.fail_on_recompile_limit_hit = True
        fn = torch.compile(fn, fullgraph=True, dynamic=False)
    device_type = opts.device
    autocast = opts.dtype == "bf16"

    def run(x: Tensor) -> Any:
        with torch.inference_mode(), _sdpa_context(opts.sdpa_backend):
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
                return fn(x)

    return run


def _sdpa_context(backend: str | None):
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend]))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    runners: dict[str, Runner], x: Tensor, *, repeats: int, warmup: int, device: str, clock: str = "wall"
) -> dict:
    """Milliseconds per call of each runner on x, the runners alternating within each repeat (order flipped every
    repeat). Returns name -> list of `repeats` timings.

    clock "process" (CPU) measures the CPU time the process used instead of wall time: on a machine shared with
    other jobs it leaves out the time the process waited for a core. It is meaningful with one thread only (with
    more, OpenMP threads spinning at barriers count as busy)."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](x)
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_time_one(runners[name], x, device, clock))
    return times


def _time_one(run: Runner, x: Tensor, device: str, clock: str = "wall") -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    now = time.process_time if clock == "process" else time.perf_counter
    t0 = now()
    run(x)
    return (now() - t0) * 1e3


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median and spread of a list of timings."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "q1": q[0], "q3": q[2], "samples": samples}


def largest_batch(run: Runner, res: tuple[int, int], *, device: str, limit: int) -> int:
    """Largest power-of-two batch (<= limit) whose forward fits in CUDA memory."""
    best, b = 0, 1
    while b <= limit:
        try:
            run(torch.randn(b, 3, *res, device=device))
            _sync(device)
            best, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if best == 0:
        raise ValueError(f"not even batch 1 fits on the GPU at {res[0]}x{res[1]}")
    return best


def peak_memory_cuda(run: Runner, x: Tensor) -> int:
    """Bytes allocated at the peak of one forward above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run(x)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def peak_memory_cpu(model: HybridViT, res: tuple[int, int], opts: BenchOptions) -> dict[str, Any]:
    """Peak resident memory of one eager forward, measured in a fresh subprocess (see `jetvit.bench.memory`)."""
    from jetvit.bench.memory import MALLOC_ENV

    spec = {
        "config": model.cfg.to_dict(),
        "res": list(res),
        "batch": 1,
        "dtype": opts.dtype,
        "head": opts.head,
        "threads": opts.threads or torch.get_num_threads(),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "jetvit.bench.memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(spec["threads"])},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class BenchResult:
    command: str
    machine: dict[str, Any]
    options: dict[str, Any]
    models: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    info["git_commit"] = _git_commit()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _git_commit() -> str | None:
    """The checkout's commit, with '+dirty' when tracked files differ from it; None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "jetvit"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_benchmark(
    teacher: HybridViT,
    hybrid: HybridViT,
    opts: BenchOptions,
    *,
    command: str,
    log: Callable[[str], None] = logger.info,
) -> BenchResult:
    """Measure teacher and hybrid at every resolution of `opts`; see the module docstring for the method.

    log: receives a line before each measurement and one result line per resolution (default: this module's
    logger; `jetvit bench` prints them)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    models = {"teacher": teacher.to(device).eval(), "hybrid": hybrid.to(device).eval()}
    runners = {name: make_runner(m, opts) for name, m in models.items()}
    result = BenchResult(
        command=command,
        machine=machine_info(opts.device),
        options={**dataclasses.asdict(opts), "resolutions": [list(r) for r in opts.resolutions]},
        models={
            name: {"arch": m.arch, "family": m.cfg.family, "dim": m.cfg.dim, "depth": m.cfg.depth}
            for name, m in models.items()
        },
    )
    for res in opts.resolutions:
        for m in models.values():
            m.grid_size(*res)  # raises a clear ValueError for sizes that are not multiples of the patch
        row: dict[str, Any] = {"res": list(res)}
        h, w = teacher.grid_size(*res)
        row["tokens"] = teacher.cfg.num_global_tokens + h * w  # CLS, registers, YOLOS detection tokens, patches
        torch.manual_seed(0)
        x = torch.randn(1, 3, *res, device=device)
        log(f"[{res[0]}x{res[1]}] latency at batch 1: warm-up {opts.warmup}, {opts.repeats} interleaved repeats")
        lat = time_interleaved(
            runners, x, repeats=opts.repeats, warmup=opts.warmup, device=opts.device, clock=opts.clock
        )
        for name, m in models.items():
            flops = m.flops(*res)["total"]
            if opts.head and m.depth_head is not None and not m.flops(*res)["head"]:
                flops = None  # the head has no cost model: an ideal speedup would be wrong
            row[name] = {"latency_ms": summarize(lat[name]), "flops": flops}
        row["throughput"] = _throughput(runners, res, opts, lat, log)
        for name in models:
            row[name]["throughput"] = row["throughput"][name]
        del row["throughput"]
        if opts.memory:
            for name, m in models.items():
                row[name]["peak_memory"] = _memory(m, runners[name], x, res, opts)
        row["speedup"] = _speedup(row, lat)
        if opts.memory:
            t, hy = row["teacher"]["peak_memory"]["bytes"], row["hybrid"]["peak_memory"]["bytes"]
            row["memory_ratio"] = hy / t if t else None
        result.rows.append(row)
        sp = row["speedup"]
        ideal = f"{sp['ideal']:.2f}x" if sp["ideal"] else "n/a"
        log(
            f"[{res[0]}x{res[1]}] teacher {row['teacher']['latency_ms']['median']:.1f} ms, hybrid "
            f"{row['hybrid']['latency_ms']['median']:.1f} ms: speedup {sp['measured']:.2f}x (ideal {ideal})"
            + (f", memory ratio {row['memory_ratio']:.2f}" if opts.memory and row["memory_ratio"] else "")
        )
    return result


def _throughput(runners: dict[str, Runner], res, opts: BenchOptions, lat: dict, log) -> dict[str, dict]:
    if opts.batch is None and opts.device == "cpu":
        # On CPU batch 1 already fills the cores at these resolutions: throughput is the inverse latency.
        return {n: {"batch": 1, "images_per_s": 1e3 / statistics.median(t)} for n, t in lat.items()}
    out = {}
    for name, run in runners.items():
        b = opts.batch or largest_batch(run, res, device=opts.device, limit=opts.max_batch)
        xb = torch.randn(b, 3, *res, device=opts.device)
        log(f"[{res[0]}x{res[1]}] {name} throughput at batch {b}")
        t = time_interleaved({name: run}, xb, repeats=max(3, opts.repeats // 2), warmup=opts.warmup, device=opts.device)
        ms = statistics.median(t[name])
        out[name] = {"batch": b, "images_per_s": b * 1e3 / ms, "batch_ms": summarize(t[name])}
    return out


def _memory(model: HybridViT, run: Runner, x: Tensor, res, opts: BenchOptions) -> dict[str, Any]:
    if opts.device == "cuda":
        peak = peak_memory_cuda(run, x)
        return {
            "bytes": peak,
            "method": "torch.cuda.max_memory_allocated over one forward, above the allocation before",
        }
    return peak_memory_cpu(model, res, opts)


def _speedup(row: dict[str, Any], lat: dict[str, list[float]]) -> dict[str, Any]:
    t, h = row["teacher"], row["hybrid"]
    measured = t["latency_ms"]["median"] / h["latency_ms"]["median"]
    pairs = sorted(a / b for a, b in zip(lat["teacher"], lat["hybrid"]))  # per-repeat ratios: the spread
    ideal = t["flops"] / h["flops"] if t["flops"] and h["flops"] else None
    return {
        "measured": measured,
        "pairs_min": pairs[0],
        "pairs_median": statistics.median(pairs),
        "pairs_max": pairs[-1],
        "ideal": ideal,
        "fraction_of_ideal": measured / ideal if ideal else None,
    }


def build_pair(teacher: HybridViT, arch: str) -> HybridViT:
    """The hybrid `arch` of `teacher` with every weight inherited (`jetvit.convert`)."""
    from jetvit.conversion import convert

    return convert(teacher, arch)
