"""Training checkpoints and the random-generator state they carry, so that a run killed at any moment can start
again. Writes are atomic (`jetvit.io.atomic_write`: a reader sees the old file or the new one, never half of one);
checkpoints are loaded with `weights_only=True`, so they hold only tensors and plain containers.

Two formats, one file each at the phase's path (`ckpt/<phase>.pt`), which is what a resume reads first:

- full (a single process, DDP, and every finished phase): the file holds the whole state, model and optimizer
  included (`save_checkpoint`);
- sharded (a phase in progress under FSDP, `save_sharded_checkpoint`): the model's and the optimizer's tensors go to
  a `torch.distributed.checkpoint` (DCP) directory `ckpt/<phase>.dcp/<id>/`, each process writing its shards, and
  the file holds the rest (position, history, every process's random state, the optimizer's hyperparameters) and
  the name of that directory. DCP reshards on loading, so a sharded checkpoint resumes on any number of processes,
  sharded or not (`load_sharded_checkpoint`).

A sharded save is atomic in effect: the processes write a new directory under a temporary name; after a barrier rank
0 renames it, then replaces the file (the commit), then deletes the older directories. A kill at any moment leaves
the file naming a complete directory. Writing a full checkpoint removes the shards directory beside it.

Loading reads data, never code: files with `weights_only=True`; DCP's tensor files are read with `weights_only=True`
by DCP itself, and its `.metadata` (a pickle) through an unpickler that builds only DCP's metadata classes.
"""

from __future__ import annotations

import os
import pickle
import random
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

from jetvit.io import atomic_torch_save

# What `jetvit.train.distill.train_phase` writes: a finished phase, and a phase in progress, full or sharded.
DONE_KEYS = ("done", "model", "summary")
RUNNING_KEYS = ("done", "stage", "step", "skipped", "history", "elapsed", "model", "optim", "rng")
SHARDED_KEYS = (
    *("done", "stage", "step", "skipped", "history", "elapsed", "rng"),
    *("shards", "optim_groups", "optim_params"),
)


def shards_dir(path: str | Path) -> Path:
    """The DCP directories of the sharded checkpoints of file `path`: `ckpt/<phase>.dcp`."""
    return Path(path).with_suffix(".dcp")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """`torch.save` to a temporary file, then rename over `path`; then remove the shards a sharded checkpoint left
    beside it (this file supersedes them). Rank 0 only."""
    atomic_torch_save(state, path)
    shutil.rmtree(shards_dir(path), ignore_errors=True)


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
    if isinstance(ck, dict) and not ck.get("done") and "shards" in ck:
        keys = SHARDED_KEYS
    missing = sorted(k for k in keys if not isinstance(ck, dict) or k not in ck)
    if missing:
        raise ValueError(
            f"checkpoint {p} is not a jetvit training checkpoint (missing {', '.join(missing)}); delete it to redo "
            f"that phase from its start, or choose another --out"
        )
    return ck


def save_sharded_checkpoint(path: str | Path, state: dict, model, optimizer) -> None:
    """Every process: the sharded checkpoint of `model` (its parameters DTensor shards) and `optimizer`, plus `state`
    (the small rest: position, history, random states), atomically in effect (the module docstring says how)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    path, root = Path(path), shards_dir(path)
    main = dist.get_rank() == 0
    box = [secrets.token_hex(4) if main else None]
    dist.broadcast_object_list(box, src=0)  # one directory name for all processes
    name = box[0]
    optim = get_optimizer_state_dict(model, optimizer)
    tmp = root / f".{name}.tmp"
    dcp.save({"model": get_model_state_dict(model), "optim": optim["state"]}, storage_writer=dcp.FileSystemWriter(tmp))
    dist.barrier()  # every process's shards are written
    if main:
        os.replace(tmp, root / name)
        # Only tensors went to DCP; the hyperparameters and which parameters have AdamW states (a supernet's
        # inactive candidates may have none yet) come back from this file.
        side = {**state, "shards": f"{root.name}/{name}", "optim_groups": optim["param_groups"]}
        atomic_torch_save({**side, "optim_params": list(optim["state"])}, path)
        for old in root.iterdir():
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_sharded_checkpoint(path: str | Path, ck: dict, model, optimizer) -> None:
    """Every process: load the model and optimizer tensors of sharded checkpoint `ck` (read from file `path` by
    `load_checkpoint`) into `model` and `optimizer`, whatever the number of processes (and whether `model` is
    sharded) now."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    where = shards_dir(path) / Path(str(ck["shards"])).name
    if not (where / ".metadata").is_file():
        raise ValueError(
            f"checkpoint {path} names the shards {where}, which are missing or incomplete; delete {path} to redo that "
            f"phase from its start, or choose another --out"
        )
    have = set(ck["optim_params"])
    optim = get_optimizer_state_dict(model, optimizer)  # gives every parameter AdamW states (a step with lr 0)
    state = {"model": get_model_state_dict(model), "optim": {k: v for k, v in optim["state"].items() if k in have}}
    reader, planner = _tensor_reader(where)
    try:
        with warnings.catch_warnings():  # without a process group DCP loads in this process, and says so
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=not dist.is_initialized())
    except (Exception, dcp.CheckpointException) as e:  # a missing key, a truncated file, a pickle with code: unreadable
        raise ValueError(
            f"the shards {where} of checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); delete "
            f"{path} to redo that phase from its start, or choose another --out"
        ) from None
    set_model_state_dict(model, state["model"])
    optim = {"state": state["optim"], "param_groups": ck["optim_groups"]}
    set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(strict=False))
    _drop_unsaved_states(model, optimizer, have)


def load_full_optimizer(model, optimizer, state: dict) -> None:
    """Load an optimizer state as a full checkpoint holds it (`optimizer.state_dict()` over `model`'s trainable
    parameters in order) into `optimizer` over `model`'s shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    by_name = {"state": {names[i]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True, strict=False))
    _drop_unsaved_states(model, optimizer, set(by_name["state"]))


def _drop_unsaved_states(model, optimizer, saved: set[str]) -> None:
    """Remove the AdamW states of the parameters none of whose names is in `saved`: loading gave them zero states and
    a step count, where the saved optimizer had none (a supernet's candidates not yet trained). AdamW then starts
    them at their first gradient, as the run that saved would have."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for p in {id(p): p for p in model.parameters()}.values():
        if not saved.intersection(names[id(p)]):
            optimizer.state.pop(p, None)


# What a DCP `.metadata` pickle may build: DCP's metadata classes, sizes, dtypes, layouts, paths.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if dtype or name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _tensor_reader(where: Path):
    """A DCP reader and load planner for directory `where` that read tensors only (`weights_only`) and metadata
    through `_MetadataUnpickler`; an entry that is not a tensor (DCP would unpickle it) is refused."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            rank = kwargs.get("rank")
            with open(where / (".metadata" if rank is None else f"__{rank}.metadata"), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            raise ValueError(f"entry {read_item.dest_index.fqn!r} is not a tensor (jetvit writes only tensors there)")

    return Reader(where), Planner()


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
