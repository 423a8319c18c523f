"""Typed configuration: frozen dataclasses built from plain dicts, rejecting unknown keys and wrong types."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .errors import NSCLError

T = TypeVar("T")


class ConfigError(NSCLError):
    pass


def _check(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name)
    if origin is typing.Literal:
        options = typing.get_args(tp)
        if value not in options or isinstance(value, bool) != any(isinstance(o, bool) for o in options):
            raise ConfigError(
                f"config key {name!r}: {value!r} is not one of {', '.join(repr(o) for o in options)}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(name, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key {name!r}: {value!r} does not fit {tp}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    if (origin is tuple or tp is tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
        if args and len(args) == len(value):
            return tuple(_check(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        if args:
            raise ConfigError(f"config key {name!r}: expected {len(args)} values, got {len(value)}")
        return tuple(value)
    if tp is Any:
        return value
    raise ConfigError(f"config key {name!r}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def check_options(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError when a ``Literal[...]`` field of dataclass ``obj`` holds a value outside its options
    (for configs built directly in Python; :func:`from_dict` checks every field)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        value = getattr(obj, f.name)
        for a in args:
            if typing.get_origin(a) is typing.Literal and value is not None:
                _check(f"{prefix}{f.name}", a, value)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            f"config key {prefix or cls.__name__!r}: expected a mapping of settings, got {data!r}"
        )
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f" in {prefix!r}" if prefix else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(unknown)} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _check(f"{prefix}.{k}" if prefix else k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``--set`` items ``KEY=VALUE`` as dotted-key updates for :func:`override`: a VALUE that is JSON (``32``,
    ``true``, ``[[5, 3, 4]]``) is read as JSON, anything else is a string."""
    updates: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            updates[k.strip()] = json.loads(v)
        except ValueError:
            updates[k.strip()] = v
    return updates


def override(obj: T, updates: Mapping[str, Any]) -> T:
    """A copy of config ``obj`` with dotted-key updates (``{"model.perception.width": 32}``), type-checked."""
    d = to_dict(obj)
    for key, value in updates.items():
        parts = key.split(".")
        cur = d
        for p in parts[:-1]:
            if not isinstance(cur.get(p), dict):
                raise ConfigError(f"unknown config key {key!r}")
            cur = cur[p]
        if parts[-1] not in cur:
            raise ConfigError(f"unknown config key {key!r}")
        cur[parts[-1]] = value
    return from_dict(type(obj), d)
