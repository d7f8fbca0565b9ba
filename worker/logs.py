"""Logging set-up: one line per event, text or JSON, e-mail addresses and the API key masked."""

from __future__ import annotations

import json
import logging
import re
import sys

from spotler_outbox.models.settings import Settings

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+\.)+[A-Za-z]{2,}")


def mask_emails(text: str) -> str:
    """a.person@example.com -> a***@***: enough to tell two apart, nothing to identify."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@***", text)


class RedactingFilter(logging.Filter):
    """Masks e-mails and the API key in every record before any handler formats it."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = self.clean(message)
        record.msg, record.args = cleaned, None
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        return True

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return mask_emails(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """Install one redacting handler on the project's loggers (idempotent).

    Celery's and the root logger's handlers get the same filter: a task's traceback passes
    through them, not through ours.
    """
    redacting = RedactingFilter((settings.api_key,))
    for name in ("", "celery", "celery.app.trace", "celery.worker"):
        for other in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in other.filters):
                other.addFilter(redacting)
    logger = logging.getLogger("spotler_outbox")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(redacting)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
