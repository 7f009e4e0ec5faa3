"""The device script: one call of at most 8 minutes on one H100 checks jetvit on CUDA and measures the paper's table.

    PYTHONPATH=. python3 benchmarks/gpu_suite.py --out $OUT            # on the GPU machine, or `make gpu-suite`
    PYTHONPATH=. python3 benchmarks/gpu_suite.py --dry-run --out DIR   # the same code path on the CPU, in seconds

In order, each step before the next:

(a) smoke: import jetvit, one bf16 forward of the tiny preset with masked windows on CUDA; if that fails, one line
    `SMOKE FAILED: ...` and exit status 1, before anything slow;
(b) tests: `pytest -m gpu` (every test marked `gpu`) in a subprocess under `--tests-timeout`; its log and JUnit XML
    go into --out, its summary line into the JSON;
(c) the table: for each model, resolution and mode, teacher against its 2-F hybrid, both with random weights
    (`jetvit.bench.presets`), bf16 (weights cast once), through `jetvit.bench.harness.measure_row`: batch-1 latency
    (interleaved, median), batch-1 peak memory, throughput at one fixed batch per resolution (8, 4, 2 images at 1, 2,
    4 megapixels), the FLOP-ideal speedup; once every row is measured, the cost model's prediction beside each
    (`jetvit.bench.cost.predict`, where it exists: CPU work, about a second a row). Modes: eager, compiled
    (regional: one compile per block kind and shape), graphs (the eager forward replayed from a CUDA graph). SDPA:
    the teacher's fastest backend at each resolution, put first in PyTorch's order for both models
    (`jetvit.bench.harness.teacher_sdpa_backend`).

The models (`jetvit.bench.presets.HYBRID_ARCHS`; block indices 0-based; every other block L and W alternating, L
first: the paper finds the first block always linear, and a Step-1 search leaves a mix of both):

    dinov3-l  (DINOv3 ViT-L/16, 24 blocks)  F at 14, 22 (the paper's DINOv3 positions)  LWLWLWLWLWLWLWFWLWLWLWFW
    dinov3-b  (DINOv3 ViT-B/16, 12 blocks)  F at 7, 11 (14/24 and 22/24 of the depth)   LWLWLWLFLWLF
    dav2-l    (Depth-Anything-V2-L with its DPT head, 24 blocks)  F at 13, 17 (the paper's positions for DAv2)
                                                                                       LWLWLWLWLWLWLFLWLFLWLWLW

Resolutions: 1024x2048, 1024x1024, 2048x2048 (patch 16); 1022x2044, 1022x1022, 2044x2044 (patch 14, DAv2, whose
73-patch rows leave masked 8x8 windows). Row order, most important first: DINOv3-L at 1024x2048 in every mode; then
eager and graphs rows by resolution (1024x2048 first), model by model; then the other compiled rows.

Time: `--budget-s` counts from the start; the table's rows end 70 s before it, for (d) and the predictions. A row starts
only if its estimated time (the slowest row of its mode so far, scaled by tokens for eager and graphs; before any, a
prior) fits what is left; what does not is listed as skipped. An alarm at the deadline stops a row that overruns. The
JSON is rewritten (atomically) after every row, so a killed call still leaves every finished row.

(d) the latency table the search reads (`jetvit.bench.latency.measure_table`: each block kind and the fixed parts
    of the first model at its first resolution, bf16, with the end-to-end check), beside the cost model's table,
    into suite.json.

Files (all in --out, five at most): suite.json (everything), table.md, suite.log, gpu_tests.log, gpu_tests.xml. The
table is printed last.

Through the device tool: `run` with command `make gpu-suite` (or `PYTHONPATH=. python3 benchmarks/gpu_suite.py --out
$OUT`) and timeout_s 540: the default budget is 450 s.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from jetvit.bench.harness import (
    BenchOptions,
    build_pair,
    machine_info,
    make_runner,
    measure_row,
    random_input,
    teacher_sdpa_backend,
)
from jetvit.bench.presets import HYBRID_ARCHS, preset_config
from jetvit.bench.report import suite_table
from jetvit.io import atomic_write_json, atomic_write_text
from jetvit.model import HybridViT

MODES = ("eager", "graphs", "compiled")  # the order within a (model, resolution)
SCHEMA = 1


@dataclass(frozen=True)
class Pair:
    """A teacher preset and its 2-F hybrid."""

    name: str
    preset: str
    arch: str
    resolutions: tuple[tuple[int, int], ...]  # the first is the pair's main row
    head: bool = False  # time backbone + DPT head

    @property
    def f_positions(self) -> list[int]:
        return [i for i, kind in enumerate(self.arch) if kind == "F"]  # 0-based


RES_16 = ((1024, 2048), (1024, 1024), (2048, 2048))
RES_14 = ((1022, 2044), (1022, 1022), (2044, 2044))
PAIRS = (
    Pair("dinov3-l", "dinov3-l", HYBRID_ARCHS["dinov3-l"], RES_16),
    Pair("dinov3-b", "dinov3-b", HYBRID_ARCHS["dinov3-b"], RES_16),
    Pair("dav2-l", "dav2-l", HYBRID_ARCHS["dav2-l"], RES_14, head=True),
)
# The dry run: the tiny preset (3 blocks, window 4) at a 5x6 grid, whose windows are masked.
DRY_PAIRS = (Pair("tiny", "tiny", "FWL", ((80, 96),)),)

# Seconds a row is expected to take before one of its mode has run (H100; the dry run: CPU, tiny).
PRIOR_S = {"eager": 30.0, "graphs": 25.0, "compiled": 150.0}
DRY_PRIOR_S = {"eager": 5.0, "graphs": 5.0, "compiled": 10.0}
# Seconds kept after the measurements for the cost model's predictions (about a second a row on the device's CPU).
PREDICT_RESERVE_S = 30.0
LATENCY_TABLE_S = 40.0  # (d): five DINOv3-L models built and timed part by part, a few seconds each


def batch_for(res: tuple[int, int]) -> int:
    """The throughput batch: 8 images at about one megapixel, 4 at two, 2 at four (about 32k tokens at patch 16)."""
    return max(1, round(8 * 1024 * 1024 / (res[0] * res[1])))


def plan_rows(pairs: tuple[Pair, ...], modes: tuple[str, ...]) -> list[tuple[Pair, tuple[int, int], str]]:
    """Every (pair, resolution, mode), most important first (see the module docstring)."""
    rows = [(p, r, m) for p in pairs for r in p.resolutions for m in modes]

    def priority(row: tuple[Pair, tuple[int, int], str]) -> tuple[int, int, int, int]:
        p, r, m = row
        pi, ri, mi = pairs.index(p), p.resolutions.index(r), MODES.index(m)
        if pi == 0 and ri == 0:
            return (0, 0, 0, mi)
        return (2 if m == "compiled" else 1, ri, pi, mi)

    return sorted(rows, key=priority)


class DeadlineReached(Exception):
    """The suite's time budget ran out while a row was running."""


@contextlib.contextmanager
def alarm_at(deadline: float):
    """Raise DeadlineReached in the main thread at `deadline` (time.monotonic); nothing where signals cannot."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise DeadlineReached()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = "cpu" if args.dry_run else "cuda"
        self.pairs = DRY_PAIRS if args.dry_run else tuple(p for p in PAIRS if p.name in args.models)
        self.priors = DRY_PRIOR_S if args.dry_run else PRIOR_S
        self.logfile: TextIO = open(self.out / "suite.log", "a", buffering=1)
        self.models: dict[str, tuple[HybridViT, HybridViT]] = {}
        self.sdpa: dict[tuple[str, tuple[int, int]], dict] = {}
        self.seen: dict[str, list[tuple[int, float]]] = {m: [] for m in MODES}  # mode -> (tokens, seconds)
        self.result: dict[str, Any] = {
            "schema": SCHEMA,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "dry_run": args.dry_run,
            "dtype": "bf16",
            "budget_s": args.budget_s,
            "machine": {},
            "smoke": None,
            "tests": None,
            "models": {},
            "rows": [],
            "skipped": [],
            "errors": [],
            "complete": False,
            "elapsed_s": 0.0,
        }

    # -- output ---------------------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.logfile.write(line + "\n")

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        atomic_write_json(self.out / "suite.json", self.result)

    def finish(self) -> None:
        self.result["complete"] = not (self.result["skipped"] or self.result["errors"])
        self.save()
        table = suite_table(self.result)
        atomic_write_text(self.out / "table.md", table)
        smoke, tests = self.result["smoke"], self.result["tests"]
        self.log(f"smoke: {'ok' if smoke and smoke['ok'] else 'FAILED'}; tests: {tests['summary'] if tests else '-'}")
        self.log(
            f"{len(self.result['rows'])} rows, {len(self.result['skipped'])} skipped, "
            f"{len(self.result['errors'])} failed, {self.result['elapsed_s']:.0f} s; files in {self.out}"
        )
        self.logfile.write(table)
        self.logfile.close()
        print(table, end="", flush=True)

    # -- (a) smoke ------------------------------------------------------------------------------------------

    def smoke(self) -> bool:
        t = time.monotonic()
        try:
            if self.device == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False: no usable GPU or CUDA build")
            self.result["machine"] = machine_info(self.device)
            torch.manual_seed(0)
            with torch.device(self.device):
                model = HybridViT(preset_config("tiny", "FWL")).to(torch.bfloat16).eval()
            x = torch.randn(2, 3, 80, 96, device=self.device, dtype=torch.bfloat16)  # 5x6 grid: masked windows
            with torch.inference_mode():
                y = model(x)
            if self.device == "cuda":
                torch.cuda.synchronize()
            expected = (2, model.cfg.num_global_tokens + 30, model.cfg.dim)
            if tuple(y.shape) != expected or not torch.isfinite(y).all():
                raise RuntimeError(
                    f"tiny forward gave shape {tuple(y.shape)} (expected {expected}) or non-finite values"
                )
            m = self.result["machine"]
            detail = f"{m.get('gpu', m['cpu'])}, torch {m['torch']}, cuda {m.get('cuda')}, triton {m.get('triton')}"
            self.result["smoke"] = {"ok": True, "seconds": round(time.monotonic() - t, 2), "detail": detail}
            self.log(f"smoke ok: {detail}")
            return True
        except Exception as e:  # any failure here ends the suite with one clear line
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            self.result["smoke"] = {"ok": False, "seconds": round(time.monotonic() - t, 2), "detail": reason}
            self.logfile.write(traceback.format_exc())
            print(f"SMOKE FAILED: {reason}", flush=True)
            return False

    # -- (b) the gpu tests ----------------------------------------------------------------------------------

    def tests(self) -> None:
        if self.args.dry_run or self.args.skip_tests:
            why = "dry run" if self.args.dry_run else "--skip-tests"
            self.result["tests"] = {"ran": False, "summary": f"not run ({why})"}
            return
        cap = min(self.args.tests_timeout, max(self.deadline - time.monotonic() - 60, 0))
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider"]
        cmd += ["--continue-on-collection-errors", f"--junitxml={self.out / 'gpu_tests.xml'}", "tests"]
        if importlib.util.find_spec("xdist") is not None:
            cmd += ["-n", "4"]  # compile-heavy tests: 4 processes on the GPU's 16 cores
        self.log(f"gpu tests: {' '.join(cmd[2:])} (at most {cap:.0f} s)")
        t = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.out / "gpu_tests.log", "w") as f:
            # A session of its own, so that a timeout ends pytest's workers with it.
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                rc = proc.wait(timeout=cap)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        lines = [ln for ln in (self.out / "gpu_tests.log").read_text(errors="replace").splitlines() if ln.strip()]
        summary = lines[-1].strip("= ") if lines else "(no output)"
        if rc is None:
            summary = f"stopped after {cap:.0f} s; last line: {summary}"
        self.result["tests"] = {"ran": True, "rc": rc, "seconds": round(time.monotonic() - t, 1), "summary": summary}
        self.log(f"gpu tests: {summary}")
        self.save()

    # -- (c) the table --------------------------------------------------------------------------------------

    def pair_models(self, pair: Pair) -> tuple[HybridViT, HybridViT]:
        if pair.name not in self.models:
            torch.manual_seed(0)
            with torch.device(self.device):
                teacher = HybridViT(preset_config(pair.preset)).to(torch.bfloat16).eval()
            hybrid = build_pair(teacher, pair.arch).eval()
            self.models[pair.name] = (teacher, hybrid)
            self.result["models"][pair.name] = {
                "preset": pair.preset,
                "teacher": teacher.arch,
                "hybrid": hybrid.arch,
                "f_positions": pair.f_positions,
                "indexing": "0-based",
                "head": pair.head,
                "window": hybrid.cfg.window_size,
                "linear_conv": hybrid.cfg.linear.conv,
            }
        return self.models[pair.name]

    def estimate(self, mode: str, tokens: int) -> float:
        seen = self.seen[mode]
        if not seen:
            return self.priors[mode]
        if mode == "compiled":  # compile time dominates and barely depends on the shape
            return max(s for _, s in seen)
        return max(s * max(1.0, tokens / n) for n, s in seen)

    def table(self) -> None:
        rows = plan_rows(self.pairs, tuple(m for m in MODES if m in self.args.modes))
        deadline = self.deadline - (0.0 if self.args.dry_run else PREDICT_RESERVE_S + LATENCY_TABLE_S)
        with alarm_at(deadline):
            for i, (pair, res, mode) in enumerate(rows):
                entry = {"model": pair.name, "res": list(res), "mode": mode}
                if mode == "graphs" and self.device != "cuda":
                    self.result["skipped"].append({**entry, "reason": "CUDA graphs need a GPU"})
                    continue
                cfg = preset_config(pair.preset)  # no model built for a row that is skipped
                tokens = cfg.num_global_tokens + (res[0] // cfg.patch_size) * (res[1] // cfg.patch_size)
                need, left = self.estimate(mode, tokens), deadline - time.monotonic()
                if need > left:
                    self.result["skipped"].append({**entry, "reason": f"time: needs ~{need:.0f} s, {left:.0f} s left"})
                    continue
                t = time.monotonic()
                try:
                    self.result["rows"].append(self.row(pair, res, mode))
                    self.seen[mode].append((tokens, time.monotonic() - t))
                except DeadlineReached:
                    reason = f"stopped at the deadline after {time.monotonic() - t:.0f} s"
                    self.result["skipped"].append({**entry, "reason": reason})
                    for p, r, m in rows[i + 1 :]:
                        self.result["skipped"].append(
                            {"model": p.name, "res": list(r), "mode": m, "reason": "deadline"}
                        )
                    self.log(f"deadline reached during {pair.name} {res[0]}x{res[1]} {mode}")
                    break
                except Exception as e:  # a failing row is recorded and the next one runs
                    reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                    self.result["errors"].append({**entry, "reason": reason})
                    self.log(f"FAILED {pair.name} {res[0]}x{res[1]} {mode}: {reason}")
                    self.logfile.write(traceback.format_exc())
                    self._cleanup()
                self.save()

    def predictions(self) -> None:
        """The cost model's prediction beside every measured row, while the budget lasts."""
        pairs = {p.name: p for p in self.pairs}
        gpu = self.result["machine"].get("gpu", "")
        done = 0
        with alarm_at(self.deadline):
            try:
                for row in self.result["rows"]:
                    pair = pairs[row["model"]]
                    models = dict(zip(("teacher", "hybrid"), self.pair_models(pair)))
                    row["prediction"] = predict(models, tuple(row["res"]), row["mode"], gpu=gpu, head=pair.head)
                    done += 1
            except DeadlineReached:
                self.log(f"deadline: the cost model predicted {done} of {len(self.result['rows'])} rows")
        self.save()

    def latency_table(self) -> None:
        """(d) the latency table the search reads (`jetvit.bench.latency`), for the first model at its first
        resolution: measured on this GPU part by part, with the end-to-end check, beside the cost model's; while the
        budget lasts (`latency_table` in the JSON: the two tables, or why there are none)."""
        need = 5.0 if self.args.dry_run else LATENCY_TABLE_S
        if self.deadline - time.monotonic() < need:
            self.result["latency_table"] = {"skipped": "the budget ran out"}
            return
        from jetvit.bench.latency import measure_table, predict_table
        from jetvit.bench.presets import preset_config

        pair = self.pairs[0]
        res = pair.resolutions[0]
        cfg = preset_config(pair.preset)
        gpu = self.result["machine"].get("gpu", "")
        with alarm_at(self.deadline):
            try:
                t = time.monotonic()
                measured = measure_table(
                    cfg, device=self.device, dtype="bf16", resolution=res, repeats=self.args.repeats
                )
                self._cleanup()
                predicted = predict_table(cfg, device="h200" if "H200" in gpu else "h100", dtype="bf16", resolution=res)
                self.result["latency_table"] = {"measured": measured.to_dict(), "predicted": predicted.to_dict()}
                self.log(f"latency table {pair.name} {res[0]}x{res[1]} ({time.monotonic() - t:.0f} s): "
                         f"{measured.describe()}; cost model: {predicted.describe()}")  # fmt: skip
            except DeadlineReached:
                self.log("deadline: no latency table")
                self.result["latency_table"] = {"skipped": "the budget ran out"}
            except Exception as e:  # a failure here must not lose the table's rows
                self.result["latency_table"] = {"error": f"{type(e).__name__}: {e}"}
                self.log(f"latency table FAILED: {type(e).__name__}: {e}")
                self.logfile.write(traceback.format_exc())
        self.save()

    def row(self, pair: Pair, res: tuple[int, int], mode: str) -> dict[str, Any]:
        from jetvit.compile import uncompile_regions

        teacher, hybrid = self.pair_models(pair)
        dry = self.args.dry_run
        opts = BenchOptions(
            resolutions=[res],
            dtype="bf16",
            mode=mode,
            device=self.device,
            repeats=self.args.repeats,
            warmup=self.args.warmup,
            memory=not dry,  # CPU memory is measured in subprocesses: seconds the dry run does not need
            head=pair.head,
            sdpa_backend="auto",
            compile_backend="eager" if dry else None,  # the dry run traces with Dynamo, without code generation
        )
        key = (pair.name, res)
        if key not in self.sdpa:  # tried eagerly, once per model and resolution, before anything is compiled
            self.sdpa[key] = teacher_sdpa_backend(teacher, random_input(1, res, opts), opts)
            self.log(f"{pair.name} {res[0]}x{res[1]} SDPA: {self.sdpa[key]['backend']} {self.sdpa[key]['trials_ms']}")
        batch = 2 if dry else batch_for(res)
        t = time.monotonic()
        if mode == "compiled":
            torch._dynamo.reset()  # each row's graphs only: nothing of another shape to check guards against
        models = {"teacher": teacher, "hybrid": hybrid}
        runners = {n: make_runner(m, opts, sdpa_backend=self.sdpa[key]["backend"]) for n, m in models.items()}
        try:
            row = measure_row(models, runners, res, opts, log=lambda m: self.log(f"{pair.name} {m}"), batch=batch)
        finally:
            del runners
            if mode == "compiled":
                for m in models.values():
                    uncompile_regions(m)
            self._cleanup()
        row = {"model": pair.name, "mode": mode, **row, "sdpa": self.sdpa[key]}
        row["prediction"] = None  # filled in after the measurements (`predictions`): CPU work the GPU need not wait on
        row["seconds"] = round(time.monotonic() - t, 2)
        return row

    def _cleanup(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def run(self) -> int:
        where = "dry run (CPU)" if self.args.dry_run else "CUDA"
        self.log(f"gpu suite: budget {self.args.budget_s:.0f} s, out {self.out}, {where}")
        if not self.smoke():
            self.save()
            self.logfile.close()
            return 1
        self.save()
        self.tests()
        self.table()
        self.latency_table()  # on the GPU, before the predictions' CPU work
        self.predictions()
        self.finish()
        return 0


def predict(
    models: dict[str, HybridViT], res: tuple[int, int], mode: str, *, gpu: str, head: bool
) -> dict[str, Any] | None:
    """The cost model's batch-1 latency of both models on this GPU (`jetvit.bench.cost.predict`, from the models'
    configs: nothing runs) and the predicted speedup; None where the cost model is missing."""
    try:
        from jetvit.bench.cost import predict as cost_predict
    except ImportError:
        return None
    device = "h200" if "H200" in gpu else "h100"  # the dry run (no GPU) predicts the H100
    try:
        reports = {
            n: cost_predict(m.cfg, *res, device=device, dtype="bf16", mode=mode, head=head) for n, m in models.items()
        }
    except Exception as e:  # a prediction is context beside the row, never a reason to lose the row
        return {"device": device, "error": f"{type(e).__name__}: {e}"[:300]}
    ms = {n: r.ms for n, r in reports.items()}
    return {
        "device": device,
        "latency_ms": ms,
        "launches": {n: r.launches for n, r in reports.items()},
        "speedup": ms["teacher"] / ms["hybrid"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the (at most five) files")
    p.add_argument("--dry-run", action="store_true", help="the same code path on the CPU: tiny preset, 2 rows")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole suite (default 450; dry 60)")
    p.add_argument("--tests-timeout", type=float, default=120.0, help="seconds for the gpu tests at most")
    p.add_argument("--skip-tests", action="store_true", help="no pytest step")
    p.add_argument("--models", nargs="+", default=[p.name for p in PAIRS], choices=[p.name for p in PAIRS])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--repeats", type=int, default=None, help="interleaved latency repeats (default 10; dry 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per model and shape (default 3; dry 1)")
    args = p.parse_args(argv)
    dry = args.dry_run
    args.budget_s = args.budget_s if args.budget_s is not None else (60.0 if dry else 450.0)
    args.repeats = args.repeats if args.repeats is not None else (2 if dry else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    if args.budget_s <= 0 or args.tests_timeout <= 0:
        raise SystemExit(f"--budget-s and --tests-timeout must be > 0, got {args.budget_s} and {args.tests_timeout}")
    return args


def main(argv: list[str] | None = None) -> int:
    return Suite(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
