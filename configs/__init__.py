"""Load the YAML config tree into a validated `Config`, with `--set dotted.key=value` overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from configs.schema import Config

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
VAR_DIR_ENV = "RECSYS_VAR_DIR"

__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "Config", "ConfigError", "load_config", "parse_overrides"]


class ConfigError(ValueError):
    """A config file or override that cannot be read or does not validate."""


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML file, following its optional `base:` (relative to the file) first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return _deep_merge(_read_yaml((path.parent / base).resolve()), data)


# Mappings a config replaces whole instead of merging into its base's: a table's numeric columns with their
# value rules are one declaration (MovieLens declares `year`, and must not inherit the shop's `price`).
REPLACED_WHOLE = {("data", "items", "numeric"), ("data", "users", "numeric")}


def _deep_merge(base: dict[str, Any], top: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and (*path, key) not in REPLACED_WHOLE:
            merged[key] = _deep_merge(merged[key], value, (*path, key))
        else:
            merged[key] = value
    return merged


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn `a.b=c` strings into a nested dict; values are parsed as YAML (so `3`, `true`, `[a, b]`)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form dotted.key=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw != "" else None
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `path` (default: the embedded default), apply overrides, and validate.

    `RECSYS_VAR_DIR`, when set, moves the var directory; an explicit `--set paths.var=` still wins.
    """
    data = _read_yaml(Path(path) if path else DEFAULT_CONFIG)
    data["config_file"] = str(Path(path).resolve()) if path else None
    if os.environ.get(VAR_DIR_ENV):
        data = _deep_merge(data, {"paths": {"var": os.environ[VAR_DIR_ENV]}})
    data = _deep_merge(data, parse_overrides(overrides))
    try:
        return Config.model_validate(data)
    except Exception as error:  # pydantic.ValidationError lists every bad key with its path
        raise ConfigError(f"invalid config {path or DEFAULT_CONFIG}:\n{error}") from error
