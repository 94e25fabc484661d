"""Wiring: a process's database, application services and rules, built in one place from `Settings`.

`create_app` (every gunicorn worker), `tollgate serve` / `worker` / `rules activate`, the demo and
the tests all start here, so that what a process is made of is decided once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tollgate.service.application.relay import Relay, RetryPolicy
from tollgate.service.application.rules_versions import RulesVersion
from tollgate.service.application.runtime import Runtime
from tollgate.service.application.times import system_now
from tollgate.service.delivery.channels import Sender
from tollgate.service.delivery.email import SmtpSender
from tollgate.service.delivery.templates import Templates
from tollgate.service.delivery.webhooks import WebhookSender
from tollgate.service.settings import Settings
from tollgate.service.storage.db import Database

log = logging.getLogger("tollgate.relay")


def _sms_webhook(settings: Settings, runtime: Runtime | None) -> Sender | None:
    if not settings.webhook_sms_url or not settings.webhook_secret:
        return None
    return WebhookSender("sms", settings.webhook_sms_url, settings.webhook_secret,
                         timeout=settings.webhook_timeout, name="SMS webhook")


def _gateway_webhook(settings: Settings, runtime: Runtime | None) -> Sender | None:
    if not settings.webhook_gateway_url or not settings.webhook_secret:
        return None
    return WebhookSender("gateway", settings.webhook_gateway_url, settings.webhook_secret,
                         timeout=settings.webhook_timeout, name="payment-gateway webhook")


def _smtp(settings: Settings, runtime: Runtime | None) -> Sender | None:
    """Email over SMTP, rendered from the templates; the billing dates in a mail follow the rules
    active when it is rendered (the bundled rules' without a runtime)."""
    if not settings.smtp_url or not settings.smtp_from:
        return None
    params = None
    if runtime is not None:
        def params() -> Mapping[str, Any]:
            return runtime.engine_for(runtime.active_rules()).policy.params
    return SmtpSender.from_url(settings.smtp_url, settings.smtp_from,
                               templates=Templates(settings.templates_dir, params=params))


#: How each notification channel leaves tollgate: channel → a factory of its sender from the
#: settings (None: not configured; that channel's notifications wait in the outbox, pending, and
#: clients can still read them from GET /notifications). Channels are what the actions write
#: (workflows/actions.py): `sms` → the SMS webhook; `gateway` (the `charge_request` template) →
#: the payment-gateway webhook; `email` → SMTP.
SENDERS: dict[str, Callable[[Settings, Runtime | None], Sender | None]] = {
    "sms": _sms_webhook,
    "gateway": _gateway_webhook,
    "email": _smtp,
}


def build_senders(settings: Settings, runtime: Runtime | None = None) -> dict[str, Sender]:
    """The configured senders by channel (`runtime`: whose active rules date the emails)."""
    built = {channel: factory(settings, runtime) for channel, factory in SENDERS.items()}
    return {channel: sender for channel, sender in built.items() if sender is not None}


def build_relay(settings: Settings, runtime: Runtime) -> Relay | None:
    """The delivery relay of a process (serve's scheduler, `tollgate worker`); None without any
    configured channel."""
    senders = build_senders(settings, runtime)
    if not senders:
        log.info("No delivery channel is configured (TOLLGATE_WEBHOOK_SMS_URL, TOLLGATE_WEBHOOK_GATEWAY_URL, "
                 "TOLLGATE_SMTP_URL): notifications stay pending in the outbox (GET /notifications).")
        return None
    log.info("Delivery relay: %s; %d per pass, %d at once, first retry after %g s, dead after %g s.",
             ", ".join(f"{channel} → {getattr(sender, 'name', type(sender).__name__)}"
                       for channel, sender in sorted(senders.items())),
             settings.relay_batch, settings.relay_concurrency, settings.relay_retry_base,
             settings.relay_retry_window)
    return Relay(runtime.outbox, senders,
                 policy=RetryPolicy(settings.relay_retry_base, settings.relay_retry_window),
                 batch=settings.relay_batch, timeout=settings.webhook_timeout,
                 concurrency=settings.relay_concurrency)


def build_runtime(settings: Settings, *, batch_workers: int | None = None) -> Runtime:
    """The application over the settings' database, nothing read or migrated yet (`batch_workers`:
    instead of the settings', e.g. 1 for a process that never fires big batches)."""
    return Runtime(Database(settings.database_url), now=settings.now or system_now,
                   workers=settings.batch_workers if batch_workers is None else batch_workers,
                   secret_key=settings.secret_key)


def start_runtime(settings: Settings, *, strict: bool = True,
                  batch_workers: int | None = None) -> tuple[Runtime, RulesVersion]:
    """`build_runtime`, then migrate the database and import the rules file if it changed since its
    last import (`Runtime.bootstrap`; `strict` there); the runtime and the active version."""
    runtime = build_runtime(settings, batch_workers=batch_workers)
    try:
        version = runtime.bootstrap(settings.rules_path, strict=strict)
    except BaseException:
        runtime.close()
        raise
    return runtime, version
