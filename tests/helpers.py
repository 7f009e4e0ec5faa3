"""Plain helpers that several test files share (fixtures live in `conftest.py`). Import them as `from helpers import
...`: pytest puts `tests/` on `sys.path`, as the `PYTHONPATH` of the tests' subprocesses does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent

# The tiny search's step 1: 24 steps at 32 px, then 4 at 48 px with gradient accumulation.
STEP1 = (
    "step1.stages=[{resolution: 32, steps: 24, batch_size: 4, lr: 1.0e-3},"
    " {resolution: 48, steps: 4, batch_size: 4, micro_batch_size: 2, lr: 5.0e-4}]"
)

# Class folders in an order that differs from the colours' order, so the name sort is what numbers them.
CLASSES = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_image_folder(root: Path, per_class: int, seed: int) -> None:
    """Solid-colour images (with a little noise, 40x32 so the short-side resize and centre crop run) per class."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-20, 21, (32, 40, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
