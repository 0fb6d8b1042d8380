"""Settings: a TOML file plus ``DICOMNODE_*`` environment overrides, validated at start.

Precedence: built-in defaults < TOML file (``--config`` or ``DICOMNODE_CONFIG``) < environment.
Every error names the key and says what a valid value looks like.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from .selection import SelectionRules

ENV_PREFIX = "DICOMNODE_"

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_DEST_RE = re.compile(r"^(?P<ae>[^@]+)@(?P<host>[^:]+):(?P<port>\d+)$")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives our results (C-STORE SCP)."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """All node and worker settings. Build with :func:`load_settings`."""

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    storage_dir: Path = Path("dicomnode-data")
    database_url: str = ""  # empty: SQLite file under storage_dir
    broker_url: str = ""  # empty: in-process execution
    queue: str = "dicomnode"
    destinations: tuple[Destination, ...] = ()
    quiet_seconds: float = 5.0
    model: Path | None = None  # None: the bundled demo model under storage_dir
    delivery_attempts: int = 5
    delivery_backoff_seconds: float = 2.0
    select_modalities: tuple[str, ...] = ("CR", "DX")
    select_body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "")
    select_views: tuple[str, ...] = ("PA", "AP", "")
    log_format: str = "console"  # console | json
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL in force (SQLite under the storage folder unless configured)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.storage_dir / 'dicomnode.sqlite3').resolve()}"

    @property
    def model_path(self) -> Path:
        """The ONNX model file in force."""
        if self.model is not None:
            return self.model
        return self.storage_dir / "models" / "pneumonia-demo.onnx"

    @property
    def selection_rules(self) -> SelectionRules:
        """The series selection rules in force."""
        return SelectionRules(self.select_modalities, self.select_body_parts, self.select_views)

    @property
    def instances_dir(self) -> Path:
        return self.storage_dir / "instances"

    @property
    def results_dir(self) -> Path:
        return self.storage_dir / "results"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some settings replaced (validated again)."""
        return _validate(replace(self, **changes))


def parse_destinations(
    value: str | list[str], key: str = "DICOMNODE_DESTINATIONS"
) -> tuple[Destination, ...]:
    """Parse ``AE@host:port`` entries (comma-separated string or list)."""
    items = value if isinstance(value, list) else [v for v in value.split(",")]
    out = []
    for raw in items:
        entry = raw.strip()
        if not entry:
            continue
        m = _DEST_RE.match(entry)
        if not m:
            raise ConfigError(f"{key} entry {entry!r} must look like AE@host:port, e.g. PACS@10.0.0.5:104")
        port = int(m["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"{key} entry {entry!r} has port {port}: use 1-65535")
        ae = m["ae"].strip()
        if not _AE_RE.match(ae):
            raise ConfigError(f"{key} entry {entry!r}: AE title must be 1-16 printable characters")
        out.append(Destination(ae, m["host"], port))
    return tuple(out)


_CASTS: dict[str, Any] = {
    "ae_title": str,
    "host": str,
    "port": int,
    "storage_dir": Path,
    "database_url": str,
    "broker_url": str,
    "queue": str,
    "quiet_seconds": float,
    "model": Path,
    "delivery_attempts": int,
    "delivery_backoff_seconds": float,
    "log_format": str,
    "log_level": str,
}


def _parse_list(value: str | list[str]) -> tuple[str, ...]:
    """Comma-separated (env) or list (TOML) of codes; "-" or "(empty)" stands for a missing value."""
    items = value if isinstance(value, list) else value.split(",")
    return tuple(
        "" if v.strip() in ("-", "(empty)") else v.strip().upper()
        for v in items
        if v.strip() or isinstance(value, list)
    )


_LIST_FIELDS = {"select_modalities", "select_body_parts", "select_views"}


def _cast(key: str, name: str, value: Any) -> Any:
    if name == "destinations":
        return parse_destinations(value, key)
    if name in _LIST_FIELDS:
        return _parse_list(value)
    caster = _CASTS[name]
    try:
        return caster(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number"}.get(caster, "a string")
        raise ConfigError(f"{key}={value!r} is not {kind}") from None


def _validate(s: Settings) -> Settings:
    if not _AE_RE.match(s.ae_title) or s.ae_title.strip() != s.ae_title:
        raise ConfigError(
            f"DICOMNODE_AE_TITLE={s.ae_title!r}: use 1-16 printable characters, no spaces at the ends"
        )
    if not 0 <= s.port < 65536:
        raise ConfigError(f"DICOMNODE_PORT={s.port}: use 0-65535 (0 picks a free port)")
    if s.quiet_seconds < 0:
        raise ConfigError(f"DICOMNODE_QUIET_SECONDS={s.quiet_seconds}: must be >= 0")
    if s.delivery_attempts < 1:
        raise ConfigError(f"DICOMNODE_DELIVERY_ATTEMPTS={s.delivery_attempts}: must be >= 1")
    if s.broker_url and not s.broker_url.startswith(("redis://", "rediss://", "amqp://", "memory://")):
        raise ConfigError(
            f"DICOMNODE_BROKER_URL={s.broker_url!r}: use a Celery broker URL such as "
            "redis://127.0.0.1:6379/0, or leave it unset for in-process execution"
        )
    if s.log_format not in ("console", "json"):
        raise ConfigError(f"DICOMNODE_LOG_FORMAT={s.log_format!r}: use console or json")
    if s.model is not None and s.model.suffix != ".onnx":
        raise ConfigError(f"DICOMNODE_MODEL={str(s.model)!r}: point it at an .onnx file")
    return s


_FIELDS = set(_CASTS) | {"destinations"} | _LIST_FIELDS


def load_settings(config_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then ``DICOMNODE_*`` variables; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"DICOMNODE_CONFIG={str(p)!r}: no such file")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
        section = data.get("dicomnode", data)
        for name, value in section.items():
            if name not in _FIELDS:
                raise ConfigError(f"config file {str(p)!r}: unknown key {name!r}; known: {sorted(_FIELDS)}")
            values[name] = _cast(f"{p.name}:{name}", name, value)
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            values[name] = _cast(key, name, env[key])
        elif key in env and name in ("broker_url", "database_url"):
            values[name] = ""
    return _validate(Settings(**values))
