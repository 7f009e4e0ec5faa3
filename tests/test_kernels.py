"""The Triton kernels against their references (`tests/kernel_checks.py`).

On CUDA the checks run here, on the compiled kernels. On the CPU they run under Triton's interpreter, which is chosen
when the kernel module is imported (`TRITON_INTERPRET=1`) and then holds for the whole process: interpreted kernels
cannot be traced on fake tensors (the cost model's trace) nor compiled, so the interpreted checks get a process of
their own instead of changing the environment of every other test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent

if torch.cuda.is_available():
    from kernel_checks import *  # noqa: F403  (the same checks, on the compiled kernels)
else:

    def test_kernels_under_the_triton_interpreter() -> None:
        pytest.importorskip("triton")
        env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly"]
        proc = subprocess.run([*cmd, str(TESTS / "kernel_checks.py")], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout and " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
