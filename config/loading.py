"""Finding and reading the config file, and turning every problem into one line that names the key.

Order: ``--config FILE``, then ``$SMARTPOS_CONFIG``, then ``/etc/smartpos/smartpos.toml``. A missing default file
means "all defaults" (a terminal before enrollment); a missing file that was asked for is an error.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from config.settings import DEFAULT_CONFIG_PATH, Settings

ENV_VAR = "SMARTPOS_CONFIG"


class ConfigError(Exception):
    """The config cannot be used. ``str()`` is one line: file, key and problem."""

    def __init__(self, message: str, *, key: str | None = None, path: Path | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path


def config_path(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    return DEFAULT_CONFIG_PATH


def load_settings(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Path]:
    """Return the validated settings and the path they came from (which may not exist: defaults)."""
    path = config_path(explicit, environ)
    asked = bool(explicit) or bool((os.environ if environ is None else environ).get(ENV_VAR))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if asked:
            raise ConfigError(f"config {path}: file not found", path=path) from None
        return Settings(), path
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror or exc}", path=path) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8 text", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: invalid TOML: {exc}", path=path) from None
    return parse_settings(data, path=path), path


def parse_settings(data: Mapping[str, Any], *, path: Path | None = None) -> Settings:
    """Validate a parsed TOML document. Relative paths are taken relative to the config file's directory."""
    data = dict(data)
    terminal = data.get("terminal")
    if path is not None and isinstance(terminal, dict) and isinstance(terminal.get("state_dir"), str):
        state_dir = Path(terminal["state_dir"]).expanduser()  # "~/..." is the user's home, not a "~" directory
        data["terminal"] = {**terminal, "state_dir": str(state_dir if state_dir.is_absolute()
                                                         else path.parent / state_dir)}
    try:
        return Settings.model_validate(data)
    except PydanticValidationError as exc:
        raise _one_line(exc, path) from None


def _one_line(exc: PydanticValidationError, path: Path | None) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        problem = "unknown key"
    elif kind == "missing":
        problem = "required key missing"
    else:
        problem = first["msg"].removeprefix("Value error, ")
        # Secrets are never echoed back into logs or terminals.
        if "input" in first and kind not in ("model_type", "dict_type") and "token" not in key:
            problem += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    where = f"config {path}: " if path is not None else "config: "
    return ConfigError(f"{where}{key}: {problem}{more}", key=key, path=path)
