"""Peak CPU memory of one forward, measured in a fresh process: `python -m jetvit.bench.memory '<json spec>'`.

Why a subprocess: torch's CPU tensors are allocated outside Python's allocator, so `tracemalloc` never sees them,
and a process's peak resident size only ever grows, so in the benchmarking process it would carry the peak of
whatever ran before. Here each measurement starts clean:

0. glibc is told to serve every allocation >= 64 KiB with its own mmap and to return freed memory at once
   (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, set by the parent): otherwise the warm-up's freed
   buffers stay resident in the heap and the measured forward reuses them without raising the resident size;
1. build the model (random weights) and the input, run one forward to warm up (oneDNN primitives, thread pools);
2. reset the kernel's resident-size high-water mark (write `5` to `/proc/self/clear_refs`, Linux >= 4.0) and read
   the current resident size;
3. run the measured forward and read the high-water mark `VmHWM` from `/proc/self/status`.

The result is the peak forward memory above the resident model, input and runtime: activations, attention
buffers and the output. Where the high-water mark cannot be reset, the fallback skips the warm-up and reports
`ru_maxrss` after the forward minus the resident size before it (noted in `method`).

Spec keys: config (ViTConfig dict), res [H, W], batch, dtype ("fp32" | "bf16": the weights and the input cast to bf16
once, as the benchmark runs it), head (bool), threads.
Prints one JSON line: {"bytes": ..., "baseline_bytes": ..., "hwm_bytes": ..., "method": ...}.

With spec key `train` ({"targets": [block indices], "checkpointing": bool}) the measured call is instead one
distillation micro-step in fp32, as `jetvit.train.distill` runs it: the frozen all-`F` teacher's target features
(no gradients), the student's forward and feature loss, the backward. The warm-up step leaves the parameters'
gradients allocated, so the result is the step's activations and working memory (what `jetvit.bench.plan` estimates).
With `"blockwise": ["LW", ...]` in `train` (the candidate kinds of each block), the step is instead one block-wise
supernet step (`jetvit.train.distill.BlockwiseStudent`): the teacher's residual states, then every candidate of
every block on them, the loss, the backward.
"""

from __future__ import annotations

import gc
import json
import resource
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# What the parent sets in the child's environment (see step 0 above).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def measure(spec: dict) -> dict:
    import torch

    from jetvit.model import HybridViT, ViTConfig

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    torch.manual_seed(0)
    model = HybridViT(ViTConfig.from_dict(spec["config"])).eval()
    x = torch.randn(int(spec.get("batch", 1)), 3, *spec["res"])
    if spec.get("dtype") == "bf16" and not spec.get("train"):
        # As the benchmark runs bf16 (`jetvit.bench.harness`): weights and input cast once, no autocast.
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    fn = model.predict_depth if spec.get("head") else model.forward

    def run():
        with torch.inference_mode():
            return fn(x)

    if spec.get("train"):
        run = _training_step(model, x, **spec["train"])

    can_reset = _reset_hwm()  # probe once; the real reset is below
    if can_reset:
        out = run()
        del out
    gc.collect()
    _malloc_trim()
    baseline = _status_kb("VmRSS") * 1024
    if can_reset:
        _reset_hwm()
    out = run()
    if can_reset:
        hwm = _status_kb("VmHWM") * 1024
        method = "fresh process, warm-up forward, VmHWM reset via /proc/self/clear_refs, peak VmHWM minus VmRSS before"
    else:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        method = "fresh process, no warm-up, ru_maxrss after the forward minus VmRSS before (HWM reset unavailable)"
    del out
    return {"bytes": max(hwm - baseline, 0), "baseline_bytes": baseline, "hwm_bytes": hwm, "method": method}


def _training_step(student, x, *, targets: list[int], checkpointing: bool = False, blockwise: list[str] | None = None):
    """One distillation micro-step of `student` on images `x` against its all-F teacher, as a function to measure."""
    import dataclasses

    import torch

    from jetvit.model import HybridViT, token_features
    from jetvit.train.distill import BlockwiseStudent, DistillStudent, feature_loss

    teacher = HybridViT(dataclasses.replace(student.cfg, arch="")).eval().requires_grad_(False)
    if blockwise is not None:
        from jetvit.search.supernet import build_supernet

        net = build_supernet(teacher, blockwise).train()
        net.set_grad_checkpointing(checkpointing)
        wrapped_net = BlockwiseStudent(net)

        def blockwise_step():
            with torch.no_grad():
                states, layout = teacher.residual_states(x)
            wrapped_net(states, layout).backward()

        return blockwise_step
    student.train().set_grad_checkpointing(checkpointing)
    wrapped = DistillStudent(student, targets, with_depth=False)

    def step():
        with torch.no_grad():
            t_feats = token_features(teacher.block_features(x, targets))
        s_feats, _ = wrapped(x)
        feature_loss(s_feats, t_feats).backward()

    return step


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
