"""Turn YAML files into config dataclasses, failing early with messages a user can act on.

Every YAML key bertforge reads is a field of some dataclass; this module is the one place that reads a config file
(``load_config``: the file, its ``includes``, ``key=value`` overrides, interpolations) and checks the mapping against
those fields, so a syntax error, a bad interpolation, an unknown key, a wrong type or an impossible value is reported
with the file it came from, the dotted key, and the fix (for a typo, the nearest valid key).

Imports no torch: `bertforge plan`, `slurm` and `--print-config` stay light.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import sysconfig
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from bertforge.errors import ConfigError
from bertforge.paths import YAMLS_DIR

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Dataclass ``cls`` from the YAML file ``path`` with its ``includes`` merged under it and ``key=value``
    overrides over it; ``${stdlib:}`` and ``${package_dir:NAME}`` resolve to where this Python keeps text."""
    return build(cls, load_mapping(path, overrides), source=str(path))


def load_mapping(path: str | Path, overrides: list[str] | None = None) -> Any:
    """The values ``load_config`` builds from, for a caller that picks the dataclass by one of them (a task's
    ``kind``)."""
    from omegaconf import OmegaConf  # noqa: PLC0415 (the GPU machine runs the model without OmegaConf)
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415 (the GPU machine runs the model without OmegaConf)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file '{path}'")
    _register_resolvers()
    try:
        conf = OmegaConf.merge(_load_with_includes(path), OmegaConf.from_dotlist(list(overrides or [])))
        resolved = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as err:  # an interpolation naming a missing key, an override of a wrong shape
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}; fix the file or the override") from None
    except TypeError as err:  # OmegaConf: "Cannot merge incompatible container types", a list item set by index
        raise ConfigError(f"{path}: an override does not fit the file ({err}): a list's items cannot be set one by "
                          f"one (`sources.0.path=...`); give the whole list (`key=[...]`) or edit the file") from None
    except yaml.YAMLError as err:  # the file itself was read by load_yaml: this is an override
        raise ConfigError(f"{path}: an override is not valid YAML ({getattr(err, 'problem', err)}); fix the file or "
                          f"the override") from None
    return resolved


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"${{package_dir:{name}}}: no installed package '{name}'")
    return list(spec.submodule_search_locations)[0]


def _register_resolvers() -> None:
    """${stdlib:} and ${package_dir:NAME} let recipes point at text every Python install has."""
    from omegaconf import OmegaConf  # noqa: PLC0415 (the GPU machine runs the model without OmegaConf)

    if not OmegaConf.has_resolver("stdlib"):
        OmegaConf.register_resolver("stdlib", lambda: sysconfig.get_paths()["stdlib"])
        OmegaConf.register_resolver("package_dir", _package_dir)


def _load_with_includes(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """The file's mapping over its ``includes`` (``key: file`` puts a file's mapping under ``key``; ``.`` at the
    top), each found beside the file or under yamls/."""
    from omegaconf import DictConfig, OmegaConf  # noqa: PLC0415 (the GPU machine runs the model without OmegaConf)

    if path in seen:
        raise ConfigError(f"{path}: includes itself (via {' -> '.join(map(str, seen))})")
    conf = load_yaml(path)
    if not isinstance(conf, DictConfig):
        raise ConfigError(f"{path}: holds a YAML list, and a config file is a mapping of keys (`key: value` lines); "
                          f"check that this is the file you meant")
    includes = conf.pop("includes", None) if "includes" in conf else None
    merged = OmegaConf.create()
    for key, target in (includes or {}).items():
        candidates = [path.parent / target, YAMLS_DIR / target]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: includes.{key} names '{target}', found neither "
                              f"{candidates[0]} nor {candidates[1]}")
        sub = _load_with_includes(found, seen + (path,))
        merged = OmegaConf.merge(merged, sub if key == "." else OmegaConf.create({key: sub}))
    return OmegaConf.merge(merged, conf)


def load_yaml(path: Path):
    """``OmegaConf.load``, with a YAML syntax error reported as one line naming the file, line and column."""
    from omegaconf import OmegaConf  # noqa: PLC0415 (the GPU machine runs the model without OmegaConf)

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

