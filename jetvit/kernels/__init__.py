"""Triton kernels of the hybrid, each beside its plain PyTorch reference (`jetvit/kernels/linear_attention.py`).

Nothing here imports Triton: the kernel modules do, and the model imports them only when it runs on CUDA with Triton
installed (`use_triton`), so `import jetvit` stays light and jetvit works without Triton (the plain paths of
`jetvit.ops`). On the CPU the kernels run only under Triton's interpreter (`TRITON_INTERPRET=1`, set before the kernel
module is imported), which is how the tests compare them with their references.
"""

from __future__ import annotations

import importlib.util
import os

# The `L` block uses the fused kernels when this is true, its tensors are on CUDA, Triton is installed and the
# shapes fit (`linear_attention.supported`). `JETVIT_TRITON=0` turns them off (an A/B against the plain path).
ENABLED = os.environ.get("JETVIT_TRITON", "1") != "0"
# Fewer patch tokens than this keep the plain path: below it a block is launch-bound and the two kernels save little.
# A guess until the GPU suite measures the crossing (the kernels move about a fifth of the plain path's bytes).
MIN_TOKENS = 1024

_HAS_TRITON: bool | None = None


def has_triton() -> bool:
    """Whether Triton can be imported (checked once, without importing it)."""
    global _HAS_TRITON
    if _HAS_TRITON is None:
        _HAS_TRITON = importlib.util.find_spec("triton") is not None
    return _HAS_TRITON


def use_triton(is_cuda: bool, num_tokens: int) -> bool:
    """Whether an `L` block on CUDA (`is_cuda`) with `num_tokens` patch tokens runs the fused kernels."""
    return ENABLED and is_cuda and num_tokens >= MIN_TOKENS and has_triton()
