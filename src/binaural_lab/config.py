"""Typed, validated configuration.

Every stage reads one section of params.yaml into a dataclass with :func:`parse`. Fields declare
their bounds with :func:`param`; a wrong type, an out-of-range value, an unknown key or a missing
key raises :class:`ParamError` naming the full key path and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user (a params value, a file): reported as one line, without a traceback."""


class ParamError(UserError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with validation metadata (bounds apply to numbers and to list items)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ParamError(f"{key}: {value!r} is not one of {list(meta['choices'])}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    for name, test, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(name)
        if bound is not None and not test(value, bound):
            raise ParamError(f"{key}: {value!r} is out of range, expected a value {word} {bound}")


def _coerce(value: Any, tp: Any, meta: Mapping[str, Any], key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, meta, key)
            except ParamError as exc:
                errors.append(str(exc))
        raise ParamError(errors[-1] if len(errors) == 1 else f"{key}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ParamError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ParamError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, meta, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamError(f"{key}: expected a mapping, got {type(value).__name__}")
        value_tp = args[1] if args else Any
        return {k: _coerce(v, value_tp, meta, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ParamError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    _check_bounds(value, meta, key)
    return value


def parse(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` is the key path used in error messages."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamError(f"{where}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name in data:
            values[name] = _coerce(data[name], hints[name], f.metadata, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamError(f"{key}: required key is missing (expected {_type_name(hints[name])})")
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (for logging and YAML)."""
    return dataclasses.asdict(obj)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, failing with the file name on a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
