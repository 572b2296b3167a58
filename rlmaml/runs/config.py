"""Typed run configuration: nested dataclasses loaded from YAML and command-line overrides.

A config is a (possibly frozen) dataclass whose fields are annotated with simple types or
further dataclasses. :func:`load_config` turns a YAML mapping plus ``key.sub=value``
overrides into an instance, checking every value against the field annotations so that a
typo or a wrong type fails at start-up with a message naming the dotted key, instead of
hours into a run. Constraints on values (positive step sizes, at least one class per task)
stay with the dataclass itself, in ``__post_init__``, written with :func:`check`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

# PyYAML follows YAML 1.1, where "1e-3" (no dot in the mantissa) is a string, not a float.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override is invalid; the message starts with the dotted key."""


def check(condition: bool, field: str, message: str) -> None:
    """Raise ``ValueError("field: message")`` unless ``condition`` holds.

    Meant for one-line value checks in a config dataclass's ``__post_init__``, e.g.
    ``check(self.ways >= 1, "ways", f"must be >= 1, got {self.ways}")``. :func:`load_config`
    prefixes the message with the dotted path of the section, so the user reads
    ``data.ways: must be >= 1, got 0``.

    Args:
        condition: The requirement on the field's value.
        field: Name of the offending field within its dataclass.
        message: What is wrong, including the bad value.

    Raises:
        ValueError: If ``condition`` is false.
    """
    if not condition:
        raise ValueError(f"{field}: {message}")


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> T:
    """Build a config dataclass from a YAML file, a mapping and ``key=value`` overrides.

    Sources are applied in order, later ones winning: the YAML file at ``path``, then
    ``data`` (merged section by section), then each override. Fields given nowhere take
    their dataclass defaults.

    Args:
        cls: The top-level config dataclass.
        path: YAML file holding a mapping, or None.
        overrides: Strings like ``"train.lr=0.1"``; the value is parsed as YAML, so
            ``x=[1, 2]`` gives a list and ``flag=true`` a bool.
        data: Extra mapping, merged over the file's contents.

    Returns:
        An instance of ``cls`` with nested dataclasses built for nested sections.

    Raises:
        ConfigError: On an unknown key, a value of the wrong type, a missing required field,
            a malformed override, or a value rejected by a dataclass's ``__post_init__``.
    """
    mapping: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top, got {_describe(loaded)}")
        mapping = _merge(mapping, loaded or {})
    if data is not None:
        mapping = _merge(mapping, data)
    for override in overrides:
        _apply_override(mapping, override)
    return _build(cls, mapping, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a config dataclass into plain dicts, lists and scalars that YAML can store.

    Tuples become lists and paths strings; :func:`load_config` turns them back according to
    the field annotations, so ``load_config(type(cfg), data=config_to_dict(cfg)) == cfg``.

    Args:
        cfg: A config dataclass instance.

    Returns:
        A dict with one entry per init field.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {_describe(cfg)}")
    return _plain(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write a config dataclass to a YAML file that :func:`load_config` reads back equal.

    Args:
        cfg: A config dataclass instance.
        path: Destination file; parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def _plain(value: Any) -> Any:
    """Recursively convert dataclasses, tuples and paths into YAML-safe values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated with ``extra``, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(mapping: dict[str, Any], override: str) -> None:
    """Set the dotted key of a ``key.sub=value`` string in ``mapping``, in place."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"{override!r}: override must look like key.sub=value")
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{override!r}: empty key in override")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse override value {raw!r}: {e}") from e
    node = mapping
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, Mapping):
            section = ".".join(parts[: i + 1])
            raise ConfigError(f"{key}: {section} is {_describe(child)}, not a section")
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


def _build(cls: type[T], mapping: Any, prefix: str) -> T:
    """Instantiate dataclass ``cls`` from ``mapping``; ``prefix`` is its dotted path."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {_describe(mapping)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = _join(prefix, str(key))
        if key not in fields:
            raise ConfigError(f"{dotted}: unknown key ({_suggest(str(key), fields, prefix)})")
        kwargs[key] = _convert(hints[key], value, dotted)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in kwargs and no_default:
            raise ConfigError(f"{_join(prefix, name)}: missing required field")
    try:
        return cls(**kwargs)
    except ValueError as e:
        message = str(e)
        if prefix:
            head = message.split(":", 1)[0]
            message = f"{prefix}.{message}" if head in fields else f"{prefix}: {message}"
        raise ConfigError(message) from e


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in the annotated form."""
    origin = typing.get_origin(tp) or tp  # A bare list, tuple or dict holds Any items.
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, key)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and not _is_plain_class(options[0]):
            return _convert(options[0], value, key)  # Keeps the precise nested error.
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise _type_error(tp, value, key)
    if origin is Literal:
        if any(type(value) is type(c) and value == c for c in args):
            return value
        raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
    if origin is list or origin is tuple:
        if not isinstance(value, list | tuple):
            raise _type_error(tp, value, key)
        if origin is list:
            item_types = [args[0] if args else Any] * len(value)
        elif len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            item_types = list(args)
        else:
            item_types = [Any] * len(value)
        items = [
            _convert(t, v, f"{key}[{i}]")
            for i, (t, v) in enumerate(zip(item_types, value, strict=True))
        ]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(tp, value, key)
        key_type, value_type = args or (Any, Any)
        return {
            _convert(key_type, k, f"{key}.{k}"): _convert(value_type, v, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _type_error(tp, value, key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(tp, value, key)
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise _type_error(tp, value, key)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _type_error(tp, value, key)
    raise ConfigError(f"{key}: unsupported annotation {_type_name(tp)}")


def _is_plain_class(tp: Any) -> bool:
    """Whether ``tp`` is a class checked as a whole, not a dataclass or generic alias."""
    return isinstance(tp, type) and not dataclasses.is_dataclass(tp) and not typing.get_args(tp)


def _type_error(tp: Any, value: Any, key: str) -> ConfigError:
    """Make the error for ``value`` not matching annotation ``tp`` at ``key``."""
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation (``int``, ``list[int]``, ``str | None``)."""
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    """Short description of a value for error messages: its type and (truncated) repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _suggest(key: str, fields: Mapping[str, Any], prefix: str) -> str:
    """Phrase close matches for a mistyped key, or list the valid keys if none is close."""
    close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(_join(prefix, c) for c in close) + "?"
    return "valid keys: " + (", ".join(fields) or "none")


def _join(prefix: str, key: str) -> str:
    """Append ``key`` to a dotted path."""
    return f"{prefix}.{key}" if prefix else key
