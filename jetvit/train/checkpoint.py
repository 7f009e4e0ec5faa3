"""Training checkpoints and the random-generator state they carry, so that a run killed at any moment can start
again. Writes are atomic (`jetvit.io.atomic_write`: a reader sees the old file or the new one, never half of one);
checkpoints are loaded with `weights_only=True`, so they hold only tensors and plain containers.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from jetvit.io import atomic_torch_save

# What `jetvit.train.distill.train_phase` writes: a finished phase, and a phase in progress.
DONE_KEYS = ("done", "model", "summary")
RUNNING_KEYS = ("done", "stage", "step", "skipped", "history", "elapsed", "model", "optim", "rng")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """`torch.save` to a temporary file, then rename over `path`."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by `save_checkpoint` onto the CPU (tensors and plain containers only)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, a pickle with code: all unreadable as a checkpoint
        raise ValueError(
            f"checkpoint {p} cannot be read (truncated or not written by jetvit: {type(e).__name__}); delete it to "
            f"redo that phase from its start, or choose another --out"
        ) from None
    keys = DONE_KEYS if isinstance(ck, dict) and ck.get("done") else RUNNING_KEYS
    missing = sorted(k for k in keys if not isinstance(ck, dict) or k not in ck)
    if missing:
        raise ValueError(
            f"checkpoint {p} is not a jetvit training checkpoint (missing {', '.join(missing)}); delete it to redo "
            f"that phase from its start, or choose another --out"
        )
    return ck


def rng_state() -> dict:
    """Every random generator a run touches, in a form `weights_only` loading accepts."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "gauss": [has_gauss, gauss]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x
