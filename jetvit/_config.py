"""Strict, typed construction of config dataclasses from plain data (saved JSON, YAML files and sections).

One checker for every config in the package (model, heads, probes, runs): each value is checked against the
field's annotation, nested dataclasses are built recursively, and every error is a `ValueError` that names the
key path (`step1.stages.0.lr`, `config.json: num_heads`) and what would be accepted. Unknown keys are errors,
never dropped.

OmegaConf structured configs were considered (the issue of one hand-written parser): OmegaConf 2.3 refuses
unions of containers (`resolution: int | [H, W]`, `distill.targets: "last" | [indices]`), which are the
natural types of several keys, so jetvit keeps this small checker.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], d: Any, what: str) -> T:
    """Build dataclass `cls` from a mapping `d`, checking keys and types; `what` names the source in errors."""
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a mapping of {cls.__name__} keys, got {type(d).__name__}")
    return build(cls, d, where="", what=what)


def build(cls: type[T], raw: dict, where: str = "", what: str = "config") -> T:
    """`cls(**raw)` with every value checked against its annotation; `where` is the key path so far."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = [k for k in raw if k not in names]
    if unknown:
        more = f" (and {', '.join(repr(prefix + k) for k in unknown[1:])})" if len(unknown) > 1 else ""
        raise ValueError(f"unknown {what} key '{prefix}{unknown[0]}'{more}; accepted keys here: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = convert(raw[f.name], hints[f.name], prefix + f.name, what)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing {what} key '{prefix}{f.name}'")
    return cls(**kwargs)  # the dataclass's own value checks (__post_init__) raise ValueError naming the key


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, where: str, what: str = "config") -> Any:
    """Check `value` against the annotation `tp` and build dataclasses; `where` is the key path."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):  # first matching option wins: order annotations narrow-first
            try:
                return convert(value, option, where, what)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} is not a {type_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null, got {value!r}")
        return None
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return build(tp, value, where, what)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(convert(v, a, f"{where}.{i}", what) for i, (v, a) in enumerate(zip(value, args)))
        items = [convert(v, args[0], f"{where}.{i}", what) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ValueError(f"{where}: expected a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"config annotation {tp!r} at {where} is not supported")  # a bug in the dataclass, not input
