"""Logging for tollgate's own processes: one stderr handler on the `tollgate` logger.

`configure_logging()` is called once at process start by `tollgate serve`, `tollgate worker` and
each gunicorn worker; every `tollgate.*` logger (`tollgate.api`, `tollgate.scheduler`,
`tollgate.timers`, `tollgate.rules`, …) reaches it. `TOLLGATE_LOG_LEVEL` sets the level (default
INFO); `TOLLGATE_LOG_FORMAT=json` writes one JSON object per line instead of text. Nothing here
logs request bodies, headers or query strings: callers pass only what may be read by anyone.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from tollgate.service.settings import Settings

ROOT_LOGGER = "tollgate"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
#: `extra={"fields": {...}}` on a log call adds these as JSON keys (and nothing to the text line).
FIELDS = "fields"


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message, the record's `fields`, and
    the traceback as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "pid": record.process,
            "message": record.getMessage()}
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, Mapping):
            entry.update({str(k): v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _TollgateHandler(logging.StreamHandler):
    """The handler `configure_logging` installs (recognised so that a second call adds none)."""


def configure_logging(settings: Settings | None = None) -> logging.Logger:
    """Send every `tollgate.*` log record at or above the settings' level (`TOLLGATE_LOG_LEVEL`)
    to stderr, as text or JSON lines (`TOLLGATE_LOG_FORMAT`); `settings`: the environment's if None.

    Idempotent: a second call (a gunicorn worker forked from a server that already called it)
    only applies the level and format again. A bad value fails at start (`Settings`).
    """
    if settings is None:
        settings = Settings.from_environment()
    level, fmt = settings.log_level, settings.log_format
    logger = logging.getLogger(ROOT_LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, _TollgateHandler)), None)
    if handler is None:
        handler = _TollgateHandler(sys.stderr)
        logger.addHandler(handler)
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logger.setLevel(level)
    return logger
