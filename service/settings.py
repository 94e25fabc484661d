"""The one settings object: everything a tollgate process is configured with, read once.

Read from the environment (`TOLLGATE_*`) and the command line's options over it, validated here
(a bad value fails at start with a sentence), then handed to `service/bootstrap.py`, which wires
the process from it. Tests build one directly or through `create_app`'s config overrides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
               # email (service/delivery/email.py); the URL holds the SMTP password: never shown
               "TOLLGATE_SMTP_URL": "smtp_url", "TOLLGATE_SMTP_FROM": "smtp_from",
               "TOLLGATE_TEMPLATES_DIR": "templates_dir",
               # `tollgate serve` (the command line's options win over these)
               "TOLLGATE_HOST": "host", "TOLLGATE_PORT": "port", "TOLLGATE_WORKERS": "workers",
               "TOLLGATE_THREADS": "threads",
               "TOLLGATE_SCHEDULER_INTERVAL_SECONDS": "scheduler_interval",
               "TOLLGATE_SCHEDULER_BATCH": "scheduler_batch",
               # `tollgate worker --metrics-port` (its own /metrics, behind the API's tokens)
               "TOLLGATE_WORKER_METRICS_HOST": "worker_metrics_host",
               "TOLLGATE_WORKER_METRICS_PORT": "worker_metrics_port"}
# Delivery (service/application/relay.py, service/delivery/webhooks.py; README "Delivery").
ENVIRONMENT.update({
    "TOLLGATE_RELAY_RETRY_BASE_SECONDS": "relay_retry_base", "TOLLGATE_RELAY_RETRY_WINDOW_SECONDS":
    "relay_retry_window", "TOLLGATE_RELAY_BATCH": "relay_batch",
    "TOLLGATE_RELAY_CONCURRENCY": "relay_concurrency", "TOLLGATE_RELAY_INTERVAL_SECONDS":
    "relay_interval", "TOLLGATE_WEBHOOK_SMS_URL": "webhook_sms_url", "TOLLGATE_WEBHOOK_GATEWAY_URL":
    "webhook_gateway_url", "TOLLGATE_WEBHOOK_SECRET": "webhook_secret",
    "TOLLGATE_WEBHOOK_TIMEOUT_SECONDS": "webhook_timeout"})
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
    #: `smtp[s]://user:password@host:port?starttls=1&timeout=10`; None: no email is sent.
    smtp_url: str | None = field(default=None, repr=False)
    #: The From of every email, e.g. `NAVER Cloud Billing <billing@example.com>`.
    smtp_from: str | None = None
    #: A folder of template files that win over the bundled ones (`email/<template>.<lang>.*.j2`).
    templates_dir: str | None = None
    # ── delivery (relay and webhooks) ──
    #: Seconds before the first retry of a failed delivery; later ones back off exponentially.
    relay_retry_base: float = 10.0
    #: Seconds from a notification's first attempt after which a failing one is dead.
    relay_retry_window: float = 24 * 3600.0
    #: Notifications a relay claims and sends per pass.
    relay_batch: int = 100
    #: Sends of a pass in flight at once (threads, each with its own kept-alive connection).
    relay_concurrency: int = 8
    #: Seconds an idle relay waits before looking again.
    relay_interval: float = 1.0
    webhook_sms_url: str | None = None
    webhook_gateway_url: str | None = None
    #: The HMAC key of `Tollgate-Signature` (never logged or shown).
    webhook_secret: str | None = field(default=None, repr=False)
    #: Seconds a webhook receiver has to connect and answer.
    webhook_timeout: float = 10.0
    host: str = "127.0.0.1"
    port: int = 8080
    #: gunicorn worker processes; None: 1 on SQLite (one writer), one per core on PostgreSQL.
    workers: int | None = None
    threads: int = 8
    #: The scheduler thread of each server worker: seconds between idle sweeps, timers per sweep.
    scheduler_interval: float = 1.0
    scheduler_batch: int = 500
    #: `tollgate worker`'s own /metrics side port (None: none) and the address it listens on.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"
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
        smtp(values)
        values.update(delivery_settings(values))
        if "host" in values:
            values["host"] = host(values["host"])
        if "port" in values:
            values["port"] = _bounded_int(values["port"], "port", 1, 65535, "a TCP port")
        if "workers" in values:
            values["workers"] = None if values["workers"] in ("auto", "", None) else \
                _bounded_int(values["workers"], "workers", 1, 64, "\"auto\" or a number of processes")
        if "threads" in values:
            values["threads"] = _bounded_int(values["threads"], "threads", 1, 256, "a number of threads")
        if "worker_metrics_host" in values:
            values["worker_metrics_host"] = host(values["worker_metrics_host"])
        if values.get("worker_metrics_port") in ("", None):
            values.pop("worker_metrics_port", None)
        else:
            values["worker_metrics_port"] = _bounded_int(values["worker_metrics_port"], "worker_metrics_port",
                                                         0, 65535, "a TCP port (0: any free one)")
        if "scheduler_interval" in values:
            values["scheduler_interval"] = _seconds(values["scheduler_interval"], "scheduler_interval")
        if "scheduler_batch" in values:
            values["scheduler_batch"] = _bounded_int(values["scheduler_batch"], "scheduler_batch", 1, 100_000,
                                                     "a number of timers")
        for name in ("rules", "secret_key", "smtp_url", "smtp_from", "templates_dir"):
            if name in values and not values[name]:
                values[name] = None
        if not values.get("database_url"):
            values.pop("database_url", None)
        return cls(**values)


def delivery_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The delivery settings among `values`, checked (numbers positive, URLs http(s), a secret
    whenever a webhook URL is set)."""
    out: dict[str, Any] = {}
    numbers = {"relay_retry_base": "TOLLGATE_RELAY_RETRY_BASE_SECONDS",
               "relay_retry_window": "TOLLGATE_RELAY_RETRY_WINDOW_SECONDS",
               "relay_interval": "TOLLGATE_RELAY_INTERVAL_SECONDS",
               "webhook_timeout": "TOLLGATE_WEBHOOK_TIMEOUT_SECONDS"}
    for name, var in numbers.items():
        if name in values:
            out[name] = _positive_number(values[name], f"{var} must be a number of seconds above 0, not "
                                                       f"{values[name]!r}.")
    if "relay_batch" in values:
        out["relay_batch"] = _positive_int(values["relay_batch"], "TOLLGATE_RELAY_BATCH must be a whole "
                                           f"number of at least 1, not {values['relay_batch']!r}.")
    if "relay_concurrency" in values:
        out["relay_concurrency"] = _positive_int(
            values["relay_concurrency"],
            f"TOLLGATE_RELAY_CONCURRENCY must be a whole number of at least 1, not "
            f"{values['relay_concurrency']!r}.")
    for name, var in (("webhook_sms_url", "TOLLGATE_WEBHOOK_SMS_URL"),
                      ("webhook_gateway_url", "TOLLGATE_WEBHOOK_GATEWAY_URL")):
        url = values.get(name)
        if name in values:
            out[name] = url or None
        if url and not str(url).startswith(("http://", "https://")):
            raise ValueError(f"{var} must be an http:// or https:// URL.")
        if url and not values.get("webhook_secret"):
            raise ValueError(f"{var} is set but TOLLGATE_WEBHOOK_SECRET is not: webhooks are always signed; "
                             "set a long random secret shared with the receiver.")
    if "webhook_secret" in values:
        out["webhook_secret"] = values["webhook_secret"] or None
    return out


def _positive_number(value: Any, refusal: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise ValueError(refusal)
    return number


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


def smtp(values: dict[str, Any]) -> None:
    """Check the email settings together: a parsable URL (shown redacted) and a From with an
    address whenever a URL is given."""
    from email.utils import parseaddr

    from tollgate.service.delivery.email import SmtpSettings

    url = values.get("smtp_url")
    if not url:
        return
    SmtpSettings.parse(url)  # ValueError naming the redacted URL
    if "@" not in parseaddr(values.get("smtp_from") or "")[1]:
        raise ValueError("TOLLGATE_SMTP_FROM must name the sender's address when TOLLGATE_SMTP_URL is set, "
                         "e.g. 'NAVER Cloud Billing <billing@example.com>'.")


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
