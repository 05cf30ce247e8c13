"""Config machinery: presets, checked overrides, JSON round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest

from tdseg_lite.config import (
    ConfigError,
    apply_overrides,
    build_config,
    load_config_json,
    resolve_preset,
    save_config_json,
)


@dataclass(frozen=True)
class ToyConfig:
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"width": 4}, "full": {"width": 64, "lr": 3e-4}}
    width: int = 16                                   # conv width
    lr: float = 1e-3                                  # learning rate
    patch: tuple[int, int, int] = (64, 64, 64)        # crop size
    mode: Literal["tokens", "pooled"] = "tokens"      # fusion mode
    levels: tuple[bool, ...] = (False, True)          # attention per level
    name: str | None = None                           # optional name
    extra: dict[str, float] = field(default_factory=dict)


def test_presets_layer_over_defaults() -> None:
    assert build_config(ToyConfig, "smoke").width == 4
    assert build_config(ToyConfig, "cpu") == ToyConfig()
    full = build_config(ToyConfig, "full", {"lr": 1})
    assert (full.width, full.lr) == (64, 1.0) and isinstance(full.lr, float)


def test_unknown_key_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown field 'widht' for ToyConfig; did you mean 'width'"):
        apply_overrides(ToyConfig(), {"widht": 3})


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("width", "big", r"`ToyConfig.width` must be an integer, got str 'big'"),
        ("width", True, r"must be an integer"),
        ("lr", "fast", r"`ToyConfig.lr` must be a number"),
        ("patch", (32, 32), r"needs 3 values, got 2"),
        ("patch", 32, r"must be a sequence"),
        ("mode", "both", r"must be one of \['tokens', 'pooled'\], got 'both'"),
        ("levels", (1, 0), r"must be True or False"),
        ("name", 5, r"matches none of"),
    ],
)
def test_type_errors_name_field_value_and_rule(key: str, value: Any, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(ToyConfig(), {key: value})


def test_lists_become_tuples_and_whole_floats_become_ints() -> None:
    cfg = apply_overrides(ToyConfig(), {"patch": [32, 32, 16], "width": 8.0, "levels": [True, True, False]})
    assert cfg.patch == (32, 32, 16) and cfg.width == 8 and cfg.levels == (True, True, False)


def test_json_round_trip(tmp_path) -> None:
    cfg = build_config(ToyConfig, "full", {"name": "run1", "extra": {"a": 1.5}})
    path = save_config_json(cfg, tmp_path / "config.json")
    assert load_config_json(ToyConfig, path) == cfg


def test_resolve_preset(monkeypatch) -> None:
    monkeypatch.setenv("TDSEG_PRESET", "smoke")
    assert resolve_preset(None) == "smoke"
    assert resolve_preset("CPU") == "cpu"
    assert resolve_preset("auto") in ("cpu", "full")
    with pytest.raises(ConfigError, match=r"preset must be one of \('smoke', 'cpu', 'full'\) or 'auto', got 'fast'"):
        resolve_preset("fast")
