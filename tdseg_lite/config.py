"""Configuration machinery: frozen dataclasses, named presets, checked overrides, JSON round trip.

Every stage of the method owns one frozen dataclass (``DataConfig`` in ``data.py``,
``TextConfig`` in ``text.py``, ...). Each declares its presets next to its fields, in a
``PRESETS`` class attribute mapping a preset name to the fields that differ from the defaults::

    @dataclass(frozen=True)
    class DataConfig:
        PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"patch_size": (32, 32, 32)}}
        patch_size: tuple[int, int, int] = (64, 64, 64)   # training crop (D, H, W) in voxels

    cfg = build_config(DataConfig, "smoke", {"cache_rate": 0.5})

The three presets:

* ``smoke`` -- CPU, seconds per notebook, no network; what CI and nbval run.
* ``cpu``   -- a laptop run of minutes that gives real (rough) numbers.
* ``full``  -- a Colab / workstation GPU run on real data.

``resolve_preset("auto")`` picks ``full`` when CUDA is available and ``cpu`` otherwise, so a
learner pressing "run all" gets a real run while CI sets ``TDSEG_PRESET=smoke``.

Explained in ``notebooks/00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from tdseg_lite.errors import ConfigError

__all__ = [
    "MOVED",
    "PRESET_NAMES",
    "ConfigError",
    "apply_overrides",
    "build_config",
    "config_from_dict",
    "config_to_dict",
    "load_config_json",
    "parse_set_arguments",
    "resolve_preset",
    "save_config_json",
    "split_keys",
]

PRESET_NAMES: tuple[str, ...] = ("smoke", "cpu", "full")

C = TypeVar("C")

#: fields that were merged into another knob: "Class.field" -> (the key to use, how to write it); refused by name
MOVED: dict[str, tuple[str, str]] = {
    "TrainConfig.ae_steps": ("label_ae.max_steps", "--set label_ae.max_steps={value}"),
    "ModelConfig.label_encoder": ("model.model",
                                  "--model pixel-diffusion for pixel-space diffusion, or leave it out for TextDiffSeg"),
}
#: common short names -> the field they mean (for "did you mean" hints)
ALIASES = {"lr": "learning_rate", "bs": "batch_size", "wd": "weight_decay", "steps": "max_steps"}


def resolve_preset(name: str | None = None) -> str:
    """Turn a preset name (or ``"auto"``/``None``) into one of ``PRESET_NAMES``.

    ``None`` reads ``$TDSEG_PRESET`` (default ``"auto"``). ``"auto"`` means ``full`` on a CUDA
    machine and ``cpu`` otherwise.
    """
    raw = name if name is not None else os.environ.get("TDSEG_PRESET", "auto")
    value = str(raw).strip().lower()
    if value == "auto":
        import torch

        return "full" if torch.cuda.is_available() else "cpu"
    if value not in PRESET_NAMES:
        raise ConfigError(
            f"preset must be one of {PRESET_NAMES} or 'auto', got {raw!r}; "
            f"pass e.g. --preset smoke (or set TDSEG_PRESET=smoke)."
        )
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(cls: type, key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against the field's annotation; allow int->float and list->tuple only."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    where = f"{cls.__name__}.{key}"
    if annotation is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"`{where}` must be one of {list(args)}, got {value!r}.")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(cls, key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"`{where}` got {value!r}, which matches none of {annotation}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{where}` must be a sequence, got {type(value).__name__} {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(cls, key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"`{where}` needs {len(args)} values, got {len(value)}: {value!r}.")
        return tuple(_coerce(cls, key, v, a) for v, a in zip(value, args))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"`{where}` must be a mapping, got {value!r}.")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{where}` must be a number, got {type(value).__name__} {value!r}.")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"`{where}` must be an integer, got {type(value).__name__} {value!r}.")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{where}` must be True or False, got {value!r}.")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{where}` must be a string, got {type(value).__name__} {value!r}.")
        return value
    return value


def moved_key_error(cls_name: str, field: str, value: Any, arg: str = "", part: str = "") -> None:
    """Raise ``ConfigError`` naming the new key when ``cls_name.field`` was merged into another knob."""
    if f"{cls_name}.{field}" not in MOVED:
        return
    new, how = MOVED[f"{cls_name}.{field}"]
    shown = f"{arg} {part}.{field}" if arg and part else f"{cls_name}.{field}"
    raise ConfigError(f"`{shown}` was merged into `{new}` (one knob), got {field}={value!r}. Write "
                      f"{how.format(value=json.dumps(value))}.")


def split_keys(keys: Mapping[str, Any], parts: tuple[str, ...] | list[str], *, default: str | None = None,
               arg: str = "--set") -> dict[str, dict[str, Any]]:
    """The one router of dotted keys: ``{"train.learning_rate": v}`` -> ``{"train": {"learning_rate": v}}``.

    Args:
        keys: ``"part.field"`` keys (plain ``"field"`` keys go to ``default`` when given).
        parts: the valid part names.
        default: the part of keys without a dot (``None``: such keys are refused).
        arg: how the keys were given, for the message (e.g. ``--set``; "" for a library call).

    Raises:
        ConfigError: a key whose part is not in ``parts`` (the nearest part is suggested).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in keys.items():
        part, dot, field = str(key).rpartition(".")
        if not dot and default is not None:
            part = default
        if part not in parts or not field:
            near = difflib.get_close_matches(part, list(parts), n=1)
            hint = f"did you mean {near[0]}.{field or '...'}? " if near else ""
            example = f"{arg} {parts[-1]}.FIELD=VALUE" if arg else f"'{parts[-1]}.FIELD'"
            raise ConfigError(f"`{f'{arg} ' if arg else ''}{key}` must start with one of {', '.join(parts)} "
                              f"(PART.FIELD), got part {part!r}; {hint}write e.g. {example}.")
        out.setdefault(part, {})[field] = value
    return out


def apply_overrides(cfg: C, overrides: Mapping[str, Any] | None) -> C:
    """Return a copy of ``cfg`` with ``overrides`` applied, each key and type checked.

    An unknown key raises ``ConfigError`` naming the nearest valid field; a value of the wrong
    type raises ``ConfigError`` naming the field, the value and the expected type.
    """
    if not overrides:
        return cfg
    cls = type(cfg)
    types = _field_types(cls)
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in types:
            moved_key_error(cls.__name__, key, value)
            near = [ALIASES[key]] if ALIASES.get(key) in types else difflib.get_close_matches(key, list(types), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(
                f"unknown field {key!r} for {cls.__name__}; {hint}valid fields: {sorted(types)}."
            )
        changes[key] = _coerce(cls, key, value, types[key])
    return dataclasses.replace(cfg, **changes)


def build_config(cls: type[C], preset: str | None = "smoke", overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``cls`` from its defaults, then its ``PRESETS[preset]`` entries, then ``overrides``."""
    name = resolve_preset(preset)
    presets: Mapping[str, Mapping[str, Any]] = getattr(cls, "PRESETS", {})
    cfg = cls()
    cfg = apply_overrides(cfg, presets.get(name, {}))
    return apply_overrides(cfg, overrides)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Inverse of ``config_to_dict``: every key checked, lists turned back into tuples."""
    return apply_overrides(cls(), data)


def save_config_json(cfg: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as indented JSON (atomically: temp file + rename) and return the path."""
    from tdseg_lite.utils import atomic_write_text

    path = Path(path)
    payload = {"__class__": type(cfg).__name__, **config_to_dict(cfg)}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def load_config_json(cls: type[C], path: str | os.PathLike[str]) -> C:
    """Read a config written by ``save_config_json``."""
    data = json.loads(Path(path).read_text())
    data.pop("__class__", None)
    return config_from_dict(cls, data)


def parse_set_arguments(items: list[str] | tuple[str, ...], arg: str = "--set") -> dict[str, Any]:
    """``["train.learning_rate=3e-4", "model.text_fusion=false", "data.patch_size=[32,32,32]"]`` -> a dict.

    Values are read as JSON (numbers, true/false, lists, "strings"); anything else stays a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`{arg}` must look like part.field=value, got {item!r}. "
                              "Write e.g. --set train.learning_rate=3e-4.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = {"True": True, "False": False}.get(raw.strip(), raw)
        out[key.strip()] = value
    return out
