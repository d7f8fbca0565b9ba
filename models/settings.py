"""The one settings object, read from the environment on first use (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from spotler_outbox.models.errors import ConfigurationError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Every knob, with its environment variable in the field's metadata."""

    database_url: str = field(
        default="sqlite:///spotler_outbox.db", metadata={"env": "OUTBOX_DATABASE_URL"}
    )
    broker_url: str = field(
        default="redis://127.0.0.1:6379/0", metadata={"env": "OUTBOX_BROKER_URL"}
    )
    api_url: str = field(default="https://api.squeezely.tech", metadata={"env": "SPOTLER_API_URL"})
    account: str = field(default="", metadata={"env": "SPOTLER_ACCOUNT"})
    # repr=False keeps the key out of every repr, traceback and log of the settings.
    api_key: str = field(default="", repr=False, metadata={"env": "SPOTLER_API_KEY"})
    # A JSON file {"<account id>": "<api key>"}: the other stores' accounts (models.accounts).
    accounts_file: str = field(default="", metadata={"env": "SPOTLER_ACCOUNTS_FILE"})
    # Per account, shared by every worker through the outbox database; 0: no budget.
    max_requests_per_second: float = field(
        default=0.0, metadata={"env": "SPOTLER_MAX_REQUESTS_PER_SECOND"}
    )
    multi_currency: bool = field(default=False, metadata={"env": "SPOTLER_MULTI_CURRENCY"})
    multi_language: bool = field(default=False, metadata={"env": "SPOTLER_MULTI_LANGUAGE"})
    hash_email: bool = field(default=False, metadata={"env": "SPOTLER_HASH_EMAIL"})
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
    wakeup_enabled: bool = field(default=True, metadata={"env": "OUTBOX_WAKEUP"})
    log_format: str = field(default="text", metadata={"env": "OUTBOX_LOG_FORMAT"})

    def __post_init__(self) -> None:
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
        if self.max_requests_per_second < 0:
            raise ConfigurationError(
                "SPOTLER_MAX_REQUESTS_PER_SECOND: must be 0 (no budget) or more, "
                f"got {self.max_requests_per_second:g}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(
                f"OUTBOX_LOG_FORMAT: must be 'text' or 'json', got {self.log_format!r}"
            )

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in env:
                continue
            values[f.name] = _parse(name, env[name], f.default)
        return cls(**values)


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
    return Settings.from_environment()


def reset_settings() -> None:
    """Forget the cached settings, so the next call reads the environment again."""
    get_settings.cache_clear()
