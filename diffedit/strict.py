"""Strict, typed values from YAML/JSON-like data: the one coercion behind every frozen config.

``coerce(value, hint, where)`` checks ``value`` against a type hint and returns it as that type, or
raises ``StrictTypeError`` whose message starts with ``where`` (the file and the key). The rules, the
same for the library's ``EditParams`` and every section of a job file:

* ``bool`` takes only ``true``/``false``; ``int`` takes integers, never booleans; ``float`` takes
  integers and floats (returned as float), never booleans; ``str`` takes only strings;
* ``Literal[...]`` takes one of its values; ``X | None`` takes null or an ``X``; a union tries its
  members in order;
* ``tuple[X, ...]`` and ``tuple[X, Y]`` take lists (returned as tuples, items checked at
  ``where[i]``); ``dict[K, V]`` takes mappings (values checked at ``where.key``).

``read_scalar`` lets a caller read a leaf before it is checked against ``bool``, ``int`` or ``float``
(the job file reads a whole ``${VAR}`` as YAML there, so ``"0.1"`` from the environment is a number).

Why not pydantic (installed here, through typer): its strict mode refuses a list for a tuple and its
lax mode turns ``"5"`` into 5 and ``1.0`` into 1, so matching these rules would take per-field
annotations on every dataclass and a translation of its error locations into ``file: section.key``
messages; these 60 lines are the whole mechanism, shared by the library and the job.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["StrictTypeError", "coerce", "describe"]


class StrictTypeError(TypeError, ValueError):
    """A value that does not have its field's type (a ``TypeError`` and a ``ValueError``: callers that
    catch either, as ``EditParams`` and the job config do, see it)."""


def coerce(value: Any, hint: Any, where: str, read_scalar: Callable[[Any, Any], Any] | None = None) -> Any:
    """``value`` checked against ``hint`` and returned as that type (lists become tuples)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where, read_scalar)
            except StrictTypeError:
                pass
        raise _wrong(where, hint, value)
    if read_scalar is not None and hint in (bool, int, float):
        value = read_scalar(value, hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise StrictTypeError(f"{where}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin is dict:
        key_hint, value_hint = get_args(hint)
        if not isinstance(value, Mapping):
            raise _wrong(where, hint, value)
        return {
            coerce(k, key_hint, where, read_scalar): coerce(v, value_hint, f"{where}.{k}", read_scalar)
            for k, v in value.items()
        }
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, hint, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]", read_scalar) for i, v in enumerate(value))
        if len(value) != len(args):
            raise StrictTypeError(f"{where}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(
            coerce(v, a, f"{where}[{i}]", read_scalar)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(where, hint, value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, hint, value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(where, hint, value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(where, hint, value)
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a bug in the caller's dataclass


def describe(hint: Any) -> str:
    """``hint`` in words: ``an integer or null``, ``a list of 2 items``, ``true or false``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(hint))
    if origin is tuple:
        args = get_args(hint)
        return "a list" if args and args[-1] is Ellipsis else f"a list of {len(args)} items"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return f"one of {list(get_args(hint))}"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _wrong(where: str, hint: Any, value: Any) -> StrictTypeError:
    return StrictTypeError(f"{where}: expected {describe(hint)}, got {_type_name(value)} {value!r}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list"),
             (Mapping, "mapping"))  # fmt: skip
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)
