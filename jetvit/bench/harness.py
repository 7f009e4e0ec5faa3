"""Teacher-vs-hybrid benchmark: latency, throughput and peak memory, measured in the same run, interleaved.

Method (the usual mistakes, avoided on purpose):

- warm-up calls before any timing (first calls pay for allocation, oneDNN primitive creation, compilation, graph
  capture);
- the device is synchronised around every timed call, with CUDA events on GPU;
- teacher and hybrid calls alternate within every repeat (and the order flips each repeat), so drifting load on a
  shared machine hits both alike; the spread of the speedup is taken over these per-repeat pairs;
- only the backbone forward (optionally with the depth head) is timed: no pre/post-processing, no host copies;
- peak memory: on CUDA `max_memory_allocated` over one forward above what was allocated before it (under CUDA graphs,
  over the captured forward); on CPU a fresh subprocess per measurement (see `jetvit.bench.memory`), because torch's
  CPU allocations are invisible to `tracemalloc` and an in-process RSS peak is polluted by everything measured before.

How a forward runs (`BenchOptions`):

- `dtype` "bf16": the models' weights are cast to bf16 once (`model.to(torch.bfloat16)`), and the input too: pure
  bf16 inference, as deployed. Autocast would instead re-cast every weight on every forward. What must not be summed
  in bf16 is not: the `L` blocks accumulate their state phi(K)^T [V, 1] in fp32 (`jetvit.ops.linear_attention`),
  SDPA and LayerNorm accumulate in fp32 internally.
- `mode` "eager"; "compiled": each block compiled once per block kind and shape (`jetvit.compile.compile_regions`,
  static shapes, `fullgraph=True`), the rest of the forward eager; "graphs" (CUDA): the eager forward captured in a
  CUDA graph per input shape and replayed, which removes the CPU's launch overhead.
- `sdpa_backend` (CUDA) "auto": the teacher's fastest SDPA backend, found by timing each candidate (flash, cudnn,
  efficient) forced alone on the teacher at that resolution, and recorded in the row; it is then put first in
  PyTorch's priority order for both models, never forced: a call it cannot take (a `W` block's masked windows under
  flash) falls through to PyTorch's own order.
- throughput: at one batch per resolution, the same for both models and modes: `batch`, else on CUDA the largest
  power of two (<= `max_batch`) whose forward, scaled from the teacher's batch-1 peak, fits a third of the free
  memory; on CPU batch 1 (the inverse latency). No search: a compiled model compiles batch 1 and that batch, once.

The ideal speedup comes from the model's own cost model, `model.flops(H, W)["total"]`.
"""

from __future__ import annotations

import contextlib
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

from jetvit.hub import source_commit
from jetvit.model import HybridViT

logger = logging.getLogger(__name__)
Runner = Callable[[Tensor], Any]

MODES = ("eager", "compiled", "graphs")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# name -> torch.nn.attention.SDPBackend member
SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}
# What "auto" tries on the teacher; math materialises the N x N scores and is never the fastest at these sizes.
SDPA_CANDIDATES = ("flash", "cudnn", "efficient")


@dataclass
class BenchOptions:
    """What to measure and how (see the module docstring)."""

    resolutions: list[tuple[int, int]]
    batch: int | None = None  # throughput batch; None: from the batch-1 peak memory on CUDA, batch 1 on CPU
    dtype: str = "fp32"  # "fp32" | "bf16" (weights cast once to bf16; no autocast)
    mode: str = "eager"  # "eager" | "compiled" (regional) | "graphs" (CUDA graphs of the eager forward)
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    memory: bool = True
    head: bool = False  # time predict_depth (backbone + DPT head) instead of the backbone alone
    # CUDA: "auto" (the teacher's fastest), "default" (PyTorch's order) or a name of SDPA_BACKENDS (put first)
    sdpa_backend: str | None = "auto"
    threads: int | None = None  # CPU threads (torch.set_num_threads); None keeps the default
    max_batch: int = 32
    clock: str = "wall"  # CPU only: "wall" (perf_counter) | "process" (CPU time of this process; see time_interleaved)
    compile_backend: str | None = None  # torch.compile backend of mode "compiled"; None: jetvit.compile's default

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False on this machine")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.mode == "graphs" and self.device != "cuda":
            raise ValueError("mode 'graphs' captures CUDA graphs: it needs --device cuda")
        if self.sdpa_backend not in (None, "auto", "default", *SDPA_BACKENDS):
            raise ValueError(
                f"sdpa_backend must be 'auto', 'default' or one of {list(SDPA_BACKENDS)}, got {self.sdpa_backend!r}"
            )
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need repeats >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.clock not in ("wall", "process") or (self.clock == "process" and self.device != "cpu"):
            raise ValueError(f"clock must be 'wall', or 'process' on CPU, got {self.clock!r} on {self.device}")
        if not self.resolutions:
            raise ValueError("give at least one resolution (--res HxW)")


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
# Running


def prepare_model(model: HybridViT, opts: BenchOptions) -> HybridViT:
    """The model on `opts.device` in `opts.dtype`, in eval mode; cast in place, once (`nn.Module.to`)."""
    return model.to(device=opts.device, dtype=DTYPES[opts.dtype]).eval()


def make_runner(model: HybridViT, opts: BenchOptions, *, sdpa_backend: str | None = None) -> Runner:
    """The timed call of `model` under `opts`: inference mode, the model cast to `opts.dtype` (in place, see
    `prepare_model`; inputs are cast to it), `sdpa_backend` first in SDPA's priority order (None: PyTorch's order).

    mode "compiled" compiles the model's blocks in place (`jetvit.compile.compile_regions`: static shapes, a graph
    break is an error); `jetvit.compile.uncompile_regions` undoes it. mode "graphs" returns a `GraphRunner`."""
    prepare_model(model, opts)
    fn: Callable[[Tensor], Any] = model.predict_depth if opts.head else model.forward
    if opts.mode == "compiled":
        from jetvit.compile import compile_regions

        compile_regions(model, backend=opts.compile_backend, dynamic=False, fullgraph=True)
    dtype = DTYPES[opts.dtype]

    def run(x: Tensor) -> Any:
        with torch.inference_mode(), sdpa_context(sdpa_backend):
            return fn(x.to(dtype))

    return GraphRunner(run) if opts.mode == "graphs" else run


def forward_runner(model: torch.nn.Module) -> Runner:
    """The timed call of `model` as it is (device, dtype and mode untouched): its forward under inference mode."""

    def run(x: Tensor) -> Any:
        with torch.inference_mode():
            return model(x)

    return run


class GraphRunner:
    """`run` captured in one CUDA graph per input shape and dtype, on the first call with that shape; later calls
    copy the input into the graph's static input, replay, and return the graph's static output (overwritten by the
    next replay: clone it to keep it). The input copy is timed with the replay: a deployment pays it too.

    `peak_bytes[key]`: the memory allocated at the peak of the captured forward, above what was allocated before
    the capture (the graph's private pool holds that much for as long as the graph lives)."""

    def __init__(self, run: Runner, *, warmup: int = 2) -> None:
        self.run, self.warmup = run, warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Any]] = {}
        self.peak_bytes: dict[tuple, int] = {}

    @staticmethod
    def key(x: Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, str(x.device))

    def capture(self, x: Tensor) -> None:
        key = self.key(x)
        static_in = x.clone()
        # Warm-up on a side stream, as CUDA graph capture requires (lazy cuBLAS/cuDNN handles, autotuning).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.run(static_in)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.run(static_in)
        torch.cuda.synchronize()
        self.peak_bytes[key] = torch.cuda.max_memory_allocated() - before
        self.graphs[key] = (graph, static_in, static_out)

    def __call__(self, x: Tensor) -> Any:
        key = self.key(x)
        if key not in self.graphs:
            self.capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out


def sdpa_context(backend: str | None) -> contextlib.AbstractContextManager:
    """`backend` first in SDPA's priority order, every other backend after it in PyTorch's own order (None: PyTorch's
    order unchanged). Nothing is forced: a call the backend cannot take falls through to the next."""
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = getattr(SDPBackend, SDPA_BACKENDS[backend])
    by_value = {int(b): b for b in SDPBackend.__members__.values() if int(b) >= 0}  # ERROR is -1
    order = [by_value[v] for v in torch._C._get_sdp_priority_order() if v in by_value]
    return sdpa_kernel([first, *(b for b in order if b != first)], set_priority=True)


def forced_sdpa(backend: str) -> contextlib.AbstractContextManager:
    """Only `backend`: a call it cannot take raises. For trying a backend on the teacher, whose calls are unmasked."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend]))


def choose_fastest(time_candidate: Callable[[str], float], candidates: tuple[str, ...] = SDPA_CANDIDATES):
    """The candidate with the smallest `time_candidate(name)` (ms); one that raises RuntimeError (no kernel for
    these inputs on this device) is skipped. Returns (the fastest or None, {name: ms or "failed: ..."})."""
    trials: dict[str, float | str] = {}
    for name in candidates:
        try:
            trials[name] = float(time_candidate(name))
        except RuntimeError as e:
            trials[name] = "failed: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    ok = {n: t for n, t in trials.items() if isinstance(t, float)}
    return (min(ok, key=ok.__getitem__) if ok else None), trials


def teacher_sdpa_backend(teacher: HybridViT, x: Tensor, opts: BenchOptions, *, repeats: int = 3) -> dict[str, Any]:
    """The SDPA backend the models run with at x's shape: {"backend": name or None, "how": ..., "trials_ms": ...}.
    "auto" on CUDA times each candidate forced alone on the eager teacher (one warm-up, median of `repeats`)."""
    choice = None if opts.sdpa_backend in (None, "default") else opts.sdpa_backend
    if opts.device != "cuda":
        return {"backend": None, "how": "PyTorch's order (SDPA backends are CUDA's)", "trials_ms": {}}
    if choice != "auto":
        return {"backend": choice, "how": "as asked" if choice else "PyTorch's order", "trials_ms": {}}
    fn = teacher.predict_depth if opts.head else teacher.forward
    x = x.to(DTYPES[opts.dtype])

    def time_candidate(name: str) -> float:
        def run(inp: Tensor) -> Any:
            with torch.inference_mode(), forced_sdpa(name):
                return fn(inp)

        run(x)
        torch.cuda.synchronize()
        return statistics.median(_time_one(run, x, "cuda") for _ in range(repeats))

    best, trials = choose_fastest(time_candidate)
    torch.cuda.empty_cache()
    how = "fastest of the candidates forced alone on the eager teacher" if best else "no candidate ran: PyTorch's order"
    return {"backend": best, "how": how, "trials_ms": trials}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# Timing and memory


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


def throughput_batch(peak_bytes: int, free_bytes: int, *, max_batch: int, fraction: float = 1 / 3) -> int:
    """The largest power of two <= max_batch whose forward, at `peak_bytes` per image (the batch-1 peak), takes at
    most `fraction` of `free_bytes` (the rest: the other model, CUDA graph pools, fragmentation). At least 1."""
    fits = int(fraction * free_bytes // max(peak_bytes, 1))
    b = 1
    while 2 * b <= min(fits, max_batch):
        b *= 2
    return b


def peak_memory_cuda(run: Runner, x: Tensor) -> int:
    """Bytes allocated at the peak of one forward above what was allocated before it; for a `GraphRunner`, at the
    peak of the captured forward (a replay allocates nothing)."""
    if isinstance(run, GraphRunner):
        if GraphRunner.key(x) not in run.peak_bytes:
            run.capture(x)
        return run.peak_bytes[GraphRunner.key(x)]
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
    info["git_commit"] = source_commit()  # of the checkout jetvit runs from; None for an installed wheel
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_bytes"] = props.total_memory
        info["gpu_sms"] = props.multi_processor_count
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


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

    The models are cast and moved in place (`prepare_model`); under mode "compiled" their blocks stay compiled.
    log: receives a line before each measurement and one result line per resolution (default: this module's
    logger; `jetvit bench` prints them)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    models = {"teacher": prepare_model(teacher, opts), "hybrid": prepare_model(hybrid, opts)}
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
    # The SDPA backends are tried eagerly, before anything is compiled or captured.
    sdpa = {res: teacher_sdpa_backend(models["teacher"], random_input(1, res, opts), opts) for res in opts.resolutions}
    for res in opts.resolutions:
        runners = {name: make_runner(m, opts, sdpa_backend=sdpa[res]["backend"]) for name, m in models.items()}
        row = measure_row(models, runners, res, opts, log=log)
        row["sdpa"] = sdpa[res]
        result.rows.append(row)
        del runners  # a GraphRunner's graphs hold their memory pools until dropped
        if opts.device == "cuda":
            torch.cuda.empty_cache()
    return result


def random_input(batch: int, res: tuple[int, int], opts: BenchOptions) -> Tensor:
    """A seeded (batch, 3, H, W) input on `opts.device` in `opts.dtype` (never zeros: they can run faster)."""
    torch.manual_seed(0)
    return torch.randn(batch, 3, *res, device=opts.device, dtype=DTYPES[opts.dtype])


def measure_row(
    models: dict[str, HybridViT],
    runners: dict[str, Runner],
    res: tuple[int, int],
    opts: BenchOptions,
    *,
    log: Callable[[str], None] = logger.info,
    batch: int | None = None,
) -> dict[str, Any]:
    """One resolution: batch-1 latency (interleaved), batch-1 peak memory, throughput at one batch (`batch`, else
    `opts.batch`, else see the module docstring), the measured and FLOP-ideal speedups. `models` and `runners`
    are keyed "teacher" and "hybrid"."""
    teacher = models["teacher"]
    row: dict[str, Any] = {"res": list(res)}
    h, w = teacher.grid_size(*res)
    row["tokens"] = teacher.cfg.num_global_tokens + h * w  # CLS, registers, YOLOS detection tokens, patches
    x = random_input(1, res, opts)
    tag = f"[{res[0]}x{res[1]} {opts.mode}]"
    log(f"{tag} latency at batch 1: warm-up {opts.warmup}, {opts.repeats} interleaved repeats")
    lat = time_interleaved(runners, x, repeats=opts.repeats, warmup=opts.warmup, device=opts.device, clock=opts.clock)
    for name, m in models.items():
        flops = m.flops(*res)
        total = flops["total"]
        if opts.head and m.depth_head is not None and not flops["head"]:
            total = None  # the head has no cost model: an ideal speedup would be wrong
        row[name] = {"latency_ms": summarize(lat[name]), "flops": total}
    cuda_peaks = {}
    if opts.device == "cuda":  # measured whenever the batch is to be derived from it
        if opts.memory or (batch or opts.batch) is None:
            cuda_peaks = {name: peak_memory_cuda(run, x) for name, run in runners.items()}
        if opts.memory:
            how = "torch.cuda.max_memory_allocated over one forward (the captured one under graphs), above before"
            for name in models:
                row[name]["peak_memory"] = {"bytes": cuda_peaks[name], "method": how}
    elif opts.memory:
        for name, m in models.items():
            row[name]["peak_memory"] = peak_memory_cpu(m, res, opts)
    tp = _throughput(runners, res, opts, lat, log, batch=batch or opts.batch, peaks=cuda_peaks)
    for name in models:
        row[name]["throughput"] = tp[name]
    row["speedup"] = _speedup(row, lat)
    t_tp, h_tp = tp["teacher"]["images_per_s"], tp["hybrid"]["images_per_s"]
    row["throughput_ratio"] = h_tp / t_tp if t_tp else None
    if opts.memory:
        t, hy = row["teacher"]["peak_memory"]["bytes"], row["hybrid"]["peak_memory"]["bytes"]
        row["memory_ratio"] = hy / t if t else None
    sp = row["speedup"]
    ideal = f"{sp['ideal']:.2f}x" if sp["ideal"] else "n/a"
    log(
        f"{tag} teacher {row['teacher']['latency_ms']['median']:.2f} ms, hybrid "
        f"{row['hybrid']['latency_ms']['median']:.2f} ms: speedup {sp['measured']:.2f}x (ideal {ideal})"
        + (f", memory ratio {row['memory_ratio']:.2f}" if opts.memory and row["memory_ratio"] else "")
    )
    return row


def _throughput(
    runners: dict[str, Runner], res, opts: BenchOptions, lat: dict, log, *, batch: int | None, peaks: dict[str, int]
) -> dict[str, dict]:
    if batch is None and opts.device == "cpu":
        # On CPU batch 1 already fills the cores at these resolutions: throughput is the inverse latency.
        return {n: {"batch": 1, "images_per_s": 1e3 / statistics.median(t)} for n, t in lat.items()}
    if batch is None:
        free, _ = torch.cuda.mem_get_info()
        batch = throughput_batch(max(peaks.values()), free, max_batch=opts.max_batch)
    xb = random_input(batch, res, opts)
    log(f"[{res[0]}x{res[1]} {opts.mode}] throughput at batch {batch}")
    t = time_interleaved(
        runners, xb, repeats=max(3, opts.repeats // 2), warmup=opts.warmup, device=opts.device, clock=opts.clock
    )
    return {
        name: {"batch": batch, "images_per_s": batch * 1e3 / statistics.median(ms), "batch_ms": summarize(ms)}
        for name, ms in t.items()
    }


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
