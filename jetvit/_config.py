"""Strict construction of config dataclasses from dicts (saved JSON, YAML sections)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise ValueError naming every key of `d` that is not a field of dataclass `cls`, and the accepted ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; accepted: {sorted(known)}")


def from_dict(cls: type[T], d: dict[str, Any], what: str) -> T:
    """`cls(**d)` after `check_keys`: unknown keys are an error, never dropped."""
    check_keys(cls, d, what)
    return cls(**d)
