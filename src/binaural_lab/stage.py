"""What every stage script and CLI command shares: params loading and clean failure.

A user error (a bad params value, a missing or corrupt file) ends the process with exit code 2 and
one line naming the key or file and what was expected, instead of a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from binaural_lab.config import ParamError, UserError, load_yaml, param, parse
from binaural_lab.paths import project_root

T = TypeVar("T")


@dataclass
class BaseParams:
    """The ``base`` section: what every data stage shares."""

    seed: int = param(0, ge=0)
    workers: int = param(2, ge=1, le=256, doc="processes or threads for simulation and features")


USER_ERRORS = (UserError, FileNotFoundError)


def load_params() -> dict[str, Any]:
    return load_yaml(project_root() / "params.yaml")


def section(params: Mapping[str, Any], name: str) -> Any:
    """``params[a][b]`` for ``name`` 'a.b', failing with the key path when a level is missing."""
    node: Any = params
    for i, part in enumerate(name.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(name.split(".")[:i]) or "params.yaml"
            keys = sorted(node) if isinstance(node, Mapping) else []
            raise ParamError(f"params.yaml: key {name!r} is missing ({where} has {keys})")
        node = node[part]
    return node


def config(params: Mapping[str, Any], name: str, cls: type[T], **overrides: Any) -> T:
    """Parse section ``name`` of params into ``cls`` (``overrides`` replace keys first)."""
    data = {**(section(params, name) or {}), **overrides}
    return parse(cls, data, name)


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; user errors become a one-line message on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
