"""Metrics to JSON lines (`metrics.jsonl`) and TensorBoard events (`tb/`), written by rank 0 only.

Every record carries the run-wide `global_step` (optimizer steps summed over phases), so curves of
successive phases follow each other. A resumed run first drops records at or after the step it resumes
from (both in the JSON lines and, through `purge_step`, in TensorBoard), so nothing is logged twice.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from jetvit.io import atomic_write_text

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a `metrics.jsonl`; a line cut short by a kill is ignored."""
    p = Path(path)
    if not p.is_file():
        return []
    records = []
    for line in p.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricLogger:
    """Append scalars to `DIR/metrics.jsonl` and `DIR/tb/`; a no-op unless `enabled` (rank 0)."""

    def __init__(self, out_dir: str | Path, *, enabled: bool, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        self._file = None
        # What the report says about TensorBoard: where it was written, or why not.
        self.tensorboard_note = "not requested"
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("global_step", 0) < resume_step or r.get("event")]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSON lines only, and the log and report say so
                self.tensorboard_note = "not written: tensorboard is not installed (pip install jetvit[tensorboard])"
                log.info("TensorBoard events %s; curves go to %s only", self.tensorboard_note, self.path.name)
                return
            self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step or None)
            self.tensorboard_note = "written to tb/"

    def log(self, phase: str, global_step: int, **scalars: float) -> None:
        if not self.enabled:
            return
        record = {"phase": phase, "global_step": global_step, "time": round(time.time(), 3), **scalars}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{phase}/{k}", v, global_step)

    def event(self, phase: str, global_step: int, **info: Any) -> None:
        """A non-scalar record (e.g. skipped images); kept across resumes."""
        if not self.enabled:
            return
        self._file.write(json.dumps({"event": phase, "global_step": global_step, **info}) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flush and close; safe to call again."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
