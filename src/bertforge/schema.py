"""Turn plain YAML mappings into config dataclasses, failing early with messages a user can act on.

Every YAML key bertforge reads is a field of some dataclass; this module is the one place that checks a
mapping against those fields, so an unknown key, a wrong type or an impossible value is reported with the
file it came from, the dotted key, and the fix (for a typo, the nearest valid key).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A problem in a config that the user can fix; the message says where and how."""


def load_yaml(path: Path):
    """``OmegaConf.load``, with a YAML syntax error reported as one line naming the file, line and column."""
    import yaml
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there") from None


def unknown_key_message(key: str, valid: typing.Iterable[str], *, prefix: str = "") -> str:
    """Name an unknown key and suggest the closest valid one, since typos are the common cause."""
    valid = sorted(valid)
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{prefix}{near[0]}'?" if near else f"valid keys here: {', '.join(valid)}"
    return f"unknown key '{prefix}{key}'; {hint}"


def build(cls: type[T], data: Mapping[str, Any] | None, *, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; errors name ``source`` (a file) and the dotted key."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top level>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{source}: {unknown_key_message(str(key), fields, prefix=prefix)}")
        kwargs[key] = _coerce(hints[key], value, source=source, key=prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        where = f"in '{prefix.rstrip('.')}': " if prefix else ""
        raise ConfigError(f"{source}: {where}{err}") from None


def _coerce(tp: Any, value: Any, *, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source=source, key=key)
            except ConfigError as err:
                errors.append(str(err))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{source}: '{key}' got {value!r}, expected {tp}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source=source, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_coerce(item, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(item, v, source=source, key=f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-5' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
    return value

