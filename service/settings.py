"""The one settings object: everything a tollgate process is configured with, read once.

Read from the environment (`TOLLGATE_*`) and the command line's options over it, validated here
(a bad value fails at start with a sentence), then handed to `service/bootstrap.py`, which wires
the process from it. Tests build one directly or through `create_app`'s config overrides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tollgate.bundled import default_rules_path
from tollgate.service.application.parallel import auto_workers
from tollgate.service.storage.db import DEFAULT_URL

DEFAULT_MAX_BODY = 1024 * 1024
LOG_FORMATS = ("text", "json")

#: Environment variables, and the setting each one gives.
ENVIRONMENT = {"TOLLGATE_DATABASE_URL": "database_url", "TOLLGATE_RULES": "rules",
               "TOLLGATE_TOKENS": "tokens", "TOLLGATE_BATCH_WORKERS": "batch_workers",
               "TOLLGATE_SECRET_KEY": "secret_key",  # keys idempotency fingerprints (Idempotency)
               "TOLLGATE_MAX_BODY_BYTES": "max_body_bytes",
               "TOLLGATE_LOG_LEVEL": "log_level", "TOLLGATE_LOG_FORMAT": "log_format",
               # `tollgate serve` (the command line's options win over these)
               "TOLLGATE_HOST": "host", "TOLLGATE_PORT": "port", "TOLLGATE_WORKERS": "workers",
               "TOLLGATE_THREADS": "threads",
               "TOLLGATE_SCHEDULER_INTERVAL_SECONDS": "scheduler_interval",
               "TOLLGATE_SCHEDULER_BATCH": "scheduler_batch"}
#: Each setting's variable, for error messages.
VARIABLES = {name: var for var, name in ENVIRONMENT.items()}


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_URL
    #: None: $TOLLGATE_RULES, ./rules.yaml if there is one, else the bundled policy (`rules_path`).
    rules: str | None = None
    #: `role=token,…` (service/auth.py); empty: `tollgate serve` makes an admin token.
    tokens: str = ""
    #: Processes that judge a big clock advance or batch of events on a SQLite file
    #: (application/parallel.py): "auto" is one per core, at most 2; 1 keeps it all in this process.
    batch_workers: int = 1
    secret_key: str | None = None
    #: The largest request body accepted (bytes); a longer one is refused with 413, chunked or not.
    max_body_bytes: int = DEFAULT_MAX_BODY
    log_level: int = logging.INFO
    log_format: str = "text"
    host: str = "127.0.0.1"
    port: int = 8080
    #: gunicorn worker processes; None: 1 on SQLite (one writer), one per core on PostgreSQL.
    workers: int | None = None
    threads: int = 8
    #: The scheduler thread of each server worker: seconds between idle sweeps, timers per sweep.
    scheduler_interval: float = 1.0
    scheduler_batch: int = 500
    #: Real time for the application (tests pin it); None: the system clock.
    now: Callable[[], datetime] | None = None

    @property
    def rules_path(self) -> str:
        return self.rules or default_rules_path()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The environment's settings (`ENVIRONMENT`), then `overrides` (raw values, checked alike);
        an override of None is an option not given (argparse's default), so the environment's stays."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {"batch_workers": "auto"}
        raw.update({name: env[var] for var, name in ENVIRONMENT.items() if var in env})
        raw.update({name: value for name, value in overrides.items() if value is not None})
        return cls.checked(raw)

    @classmethod
    def checked(cls, raw: Mapping[str, Any]) -> Settings:
        """Settings from raw values (text from the environment, or typed), each checked."""
        values = dict(raw)
        if "batch_workers" in values:
            values["batch_workers"] = batch_workers(values["batch_workers"])
        if "max_body_bytes" in values:
            values["max_body_bytes"] = max_body(values["max_body_bytes"])
        if "log_level" in values:
            values["log_level"] = log_level(values["log_level"])
        if "log_format" in values:
            values["log_format"] = log_format(values["log_format"])
        if "host" in values:
            values["host"] = host(values["host"])
        if "port" in values:
            values["port"] = _bounded_int(values["port"], "port", 1, 65535, "a TCP port")
        if "workers" in values:
            values["workers"] = None if values["workers"] in ("auto", "", None) else \
                _bounded_int(values["workers"], "workers", 1, 64, "\"auto\" or a number of processes")
        if "threads" in values:
            values["threads"] = _bounded_int(values["threads"], "threads", 1, 256, "a number of threads")
        if "scheduler_interval" in values:
            values["scheduler_interval"] = _seconds(values["scheduler_interval"], "scheduler_interval")
        if "scheduler_batch" in values:
            values["scheduler_batch"] = _bounded_int(values["scheduler_batch"], "scheduler_batch", 1, 100_000,
                                                     "a number of timers")
        for name in ("rules", "secret_key"):
            if name in values and not values[name]:
                values[name] = None
        if not values.get("database_url"):
            values.pop("database_url", None)
        return cls(**values)


def batch_workers(value: Any) -> int:
    if value == "auto":
        return auto_workers()
    return _positive_int(value, f"TOLLGATE_BATCH_WORKERS must be \"auto\" or a whole number of at least 1, "
                                f"not {value!r}.")


def max_body(value: Any) -> int:
    return _positive_int(value, f"TOLLGATE_MAX_BODY_BYTES must be a whole number of bytes, at least 1, not "
                                f"{value!r}; the default is {DEFAULT_MAX_BODY} (1 MiB).")


def log_level(value: Any) -> int:
    if isinstance(value, int):
        return value
    name = (str(value) or "INFO").strip().upper()
    level = logging.getLevelNamesMapping().get(name)
    if level is None:
        raise ValueError(f"TOLLGATE_LOG_LEVEL={name!r} is not a log level; use DEBUG, INFO, WARNING, "
                         "ERROR or CRITICAL.")
    return level


def log_format(value: Any) -> str:
    fmt = (str(value) or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"TOLLGATE_LOG_FORMAT={fmt!r} is not a log format; use text or json.")
    return fmt


def host(value: Any) -> str:
    text = str(value).strip()
    if not text or any(c.isspace() or c in "/@?#" for c in text) or len(text) > 253:
        raise ValueError(f"TOLLGATE_HOST={value!r} is not an address to listen on; give an IP address or "
                         "a host name, e.g. 127.0.0.1 or 0.0.0.0.")
    return text


def _bounded_int(value: Any, name: str, low: int, high: int, what: str) -> int:
    """`value` as a whole number from `low` to `high`; otherwise ValueError naming the variable."""
    if isinstance(value, bool):
        value = None
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"{VARIABLES[name]}={str(value)!r} is not {what}: give a whole number from {low} to "
                         f"{high}.")
    return number


def _seconds(value: Any, name: str) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = -1.0
    if not 0.01 <= number <= 3600:
        raise ValueError(f"{VARIABLES[name]}={str(value)!r} is not a number of seconds from 0.01 to 3600.")
    return number


def _positive_int(value: Any, refusal: str) -> int:
    """`value` as a whole number of at least 1; otherwise ValueError(`refusal`)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(refusal)
    return number
