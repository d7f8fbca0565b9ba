"""The settings, read from the environment on first use (never at import).

Two sides read them. The order system's process (the producer) reads only what an enqueue
needs, `ProducerSettings`, from its own environment: never a `.env` file (its working
directory is the shop's) and never a worker's setting, so nothing the workers need can fail a
checkout. The workers and the CLI read `Settings`, every name: from the environment, a file the
environment names (`NAME_FILE`, for the secrets, as Docker secrets provide them), then the same
two in a `.env` file in the working directory. The environment always wins over `.env`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from spotler_outbox.models.errors import ConfigurationError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ProducerSettings:
    """What an enqueue reads, with its environment variable in each field's metadata: the
    wake-up, and what validation needs (the workers read the same names and must agree)."""

    READS_DOTENV: ClassVar[bool] = False

    broker_url: str = field(
        default="redis://127.0.0.1:6379/0", metadata={"env": "OUTBOX_BROKER_URL", "secret": True}
    )
    wakeup_enabled: bool = field(default=True, metadata={"env": "OUTBOX_WAKEUP"})
    # Read by an enqueue only to store account=SPOTLER_ACCOUNT as the default account.
    account: str = field(default="", metadata={"env": "SPOTLER_ACCOUNT", "secret": True})
    multi_currency: bool = field(default=False, metadata={"env": "SPOTLER_MULTI_CURRENCY"})
    multi_language: bool = field(default=False, metadata={"env": "SPOTLER_MULTI_LANGUAGE"})
    hash_email: bool = field(default=False, metadata={"env": "SPOTLER_HASH_EMAIL"})

    def __post_init__(self) -> None:
        if not _URL_SCHEME.match(self.broker_url):
            # The value is not echoed: a broker URL may carry a password.
            raise ConfigurationError(
                "OUTBOX_BROKER_URL: not a broker URL; expected one such as "
                "redis://host:6379/0")

    def with_overrides(self, **changes: Any) -> Self:
        return replace(self, **changes)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         dotenv: Path | None = None) -> Self:
        """environ defaults to os.environ, and then (for `Settings` only) dotenv to ./.env,
        read if it exists."""
        if environ is None:
            environ = os.environ
            if dotenv is None and cls.READS_DOTENV:
                dotenv = Path(".env")
        sources = [environ, read_dotenv(dotenv) if dotenv is not None else {}]
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = _lookup(name, sources, secret=f.metadata.get("secret", False))
            if raw is not None:
                values[f.name] = _parse(name, raw, f.default)
        return cls(**values)


@dataclass(frozen=True)
class Settings(ProducerSettings):
    """Every knob: the producer's and the workers' (and the CLI's, which reads the same)."""

    READS_DOTENV: ClassVar[bool] = True

    # No default: outside the demo (which names its own) the outbox is the shop's database.
    database_url: str = field(
        default="", metadata={"env": "OUTBOX_DATABASE_URL", "secret": True},
    )
    api_url: str = field(default="https://api.squeezely.tech", metadata={"env": "SPOTLER_API_URL"})
    # repr=False keeps the key out of every repr, traceback and log of the settings.
    api_key: str = field(default="", repr=False,
                         metadata={"env": "SPOTLER_API_KEY", "secret": True})
    # A JSON file {"<account id>": "<api key>"}: the other stores' accounts (models.accounts).
    accounts_file: str = field(default="", metadata={"env": "SPOTLER_ACCOUNTS_FILE"})
    # Per account, shared by every worker through the outbox database; 0: no budget.
    max_requests_per_second: float = field(
        default=0.0, metadata={"env": "SPOTLER_MAX_REQUESTS_PER_SECOND"}
    )
    batch_size: int = field(default=100, metadata={"env": "SPOTLER_BATCH_SIZE"})
    connect_timeout: float = field(default=5.0, metadata={"env": "SPOTLER_CONNECT_TIMEOUT"})
    read_timeout: float = field(default=30.0, metadata={"env": "SPOTLER_READ_TIMEOUT"})
    backoff_base: float = field(default=30.0, metadata={"env": "OUTBOX_BACKOFF_BASE_SECONDS"})
    backoff_cap: float = field(default=21600.0, metadata={"env": "OUTBOX_BACKOFF_CAP_SECONDS"})
    max_attempts: int = field(default=17, metadata={"env": "OUTBOX_MAX_ATTEMPTS"})
    max_age: float = field(default=86400.0, metadata={"env": "OUTBOX_MAX_AGE_SECONDS"})
    retry_after_cap: float = field(
        default=3600.0, metadata={"env": "OUTBOX_RETRY_AFTER_CAP_SECONDS"}
    )
    lease_seconds: float = field(default=120.0, metadata={"env": "OUTBOX_LEASE_SECONDS"})
    sweep_interval: float = field(default=2.0, metadata={"env": "OUTBOX_SWEEP_INTERVAL_SECONDS"})
    sweep_fanout: int = field(default=2, metadata={"env": "OUTBOX_SWEEP_FANOUT"})
    auth_recheck_interval: float = field(
        default=60.0, metadata={"env": "OUTBOX_AUTH_RECHECK_SECONDS"}
    )
    dispatch_time_budget: float = field(
        default=5.0, metadata={"env": "OUTBOX_DISPATCH_TIME_BUDGET_SECONDS"}
    )
    retention_days: int = field(default=30, metadata={"env": "OUTBOX_RETENTION_DAYS"})
    log_format: str = field(default="text", metadata={"env": "OUTBOX_LOG_FORMAT"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_api_url(self.api_url)
        if not 1 <= self.batch_size <= 1000:
            raise ConfigurationError(
                f"SPOTLER_BATCH_SIZE: must be between 1 and 1000, got {self.batch_size}"
            )
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"OUTBOX_MAX_ATTEMPTS: must be at least 1, got {self.max_attempts}"
            )
        if self.lease_seconds <= self.connect_timeout + self.read_timeout:
            raise ConfigurationError(
                "OUTBOX_LEASE_SECONDS: must exceed SPOTLER_CONNECT_TIMEOUT + "
                f"SPOTLER_READ_TIMEOUT ({self.connect_timeout + self.read_timeout:g}s), "
                f"got {self.lease_seconds:g}"
            )
        if self.sweep_interval <= 0:
            raise ConfigurationError(
                f"OUTBOX_SWEEP_INTERVAL_SECONDS: must be more than 0, got {self.sweep_interval:g}"
            )
        if self.retention_days < 0:
            raise ConfigurationError(
                f"OUTBOX_RETENTION_DAYS: must be 0 (keep everything) or more, "
                f"got {self.retention_days}"
            )
        if self.max_requests_per_second < 0:
            raise ConfigurationError(
                "SPOTLER_MAX_REQUESTS_PER_SECOND: must be 0 (no budget) or more, "
                f"got {self.max_requests_per_second:g}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(
                f"OUTBOX_LOG_FORMAT: must be 'text' or 'json', got {self.log_format!r}"
            )


def check_api_url(url: str) -> str:
    """https anywhere; plain http only to this machine, so TLS can never be switched off."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url.rstrip("/")
    raise ConfigurationError(
        f"SPOTLER_API_URL: must be https:// (plain http:// only for loopback), got {url!r}"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def producer_names() -> list[str]:
    """The variables the order system's process reads."""
    return [f.metadata["env"] for f in fields(ProducerSettings)]


def secret_file_variables() -> list[str]:
    """The `NAME_FILE` variables: one for each secret setting."""
    return [f.metadata["env"] + "_FILE" for f in fields(Settings) if f.metadata.get("secret")]


def _lookup(name: str, sources: list[Mapping[str, str]], *, secret: bool) -> str | None:
    for source in sources:
        in_file = source.get(name + "_FILE") if secret else None
        if in_file is not None and source.get(name) == "":
            return _read_secret_file(name + "_FILE", in_file)  # `NAME=` left empty in a .env
        if name in source and in_file is not None:
            raise ConfigurationError(f"{name} and {name}_FILE are both set; set one of them")
        if name in source:
            return source[name]
        if in_file is not None:
            return _read_secret_file(name + "_FILE", in_file)
    return None


def _read_secret_file(variable: str, path: str) -> str:
    try:
        # A secret file usually ends with a newline; a secret never does.
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigurationError(f"{variable}: cannot read {path}: {reason}") from e


_DOTENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def read_dotenv(path: Path) -> dict[str, str]:
    """`NAME=value` lines as docker compose reads them: # comments, optional quotes, no
    expansion. A missing file is an empty one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read: {e.strerror or e}") from e
    values = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _DOTENV_LINE.match(stripped)
        if match is None:
            raise ConfigurationError(f"{path} line {number}: expected NAME=value")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        values[name] = value
    return values


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(f"{name}: expected true or false, got {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as e:
        raise ConfigurationError(f"{name}: expected a number, got {raw!r}") from e
    return raw.strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Every setting: what the workers and the CLI read."""
    return Settings.from_environment()


@lru_cache(maxsize=1)
def get_producer_settings() -> ProducerSettings:
    """What an enqueue reads: a worker's setting, however malformed, never reaches it."""
    return ProducerSettings.from_environment()


def reset_settings() -> None:
    """Forget the cached settings, so the next call reads the environment again."""
    get_settings.cache_clear()
    get_producer_settings.cache_clear()
