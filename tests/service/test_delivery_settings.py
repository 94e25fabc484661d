"""Delivery settings (checked at start, secrets never echoed), the senders wired by channel, and
the signature scheme receivers verify (Stripe's: t=…,v1=HMAC-SHA256 of "t.body")."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tollgate.service.bootstrap import build_senders
from tollgate.service.delivery.signatures import SignatureError, sign, verify
from tollgate.service.settings import Settings

SECRET = "whsec_" + "s" * 30


def test_delivery_settings_come_from_the_environment() -> None:
    settings = Settings.from_environment({
        "TOLLGATE_RELAY_RETRY_BASE_SECONDS": "2.5", "TOLLGATE_RELAY_RETRY_WINDOW_SECONDS": "600",
        "TOLLGATE_RELAY_BATCH": "20", "TOLLGATE_RELAY_CONCURRENCY": "3",
        "TOLLGATE_WEBHOOK_TIMEOUT_SECONDS": "4",
        "TOLLGATE_WEBHOOK_SMS_URL": "https://sms.example/hook", "TOLLGATE_WEBHOOK_SECRET": SECRET})
    assert (settings.relay_retry_base, settings.relay_retry_window, settings.relay_batch,
            settings.relay_concurrency, settings.webhook_timeout) == (2.5, 600.0, 20, 3, 4.0)
    assert set(build_senders(settings)) == {"sms"}
    defaults = Settings.from_environment({})
    assert (defaults.relay_retry_base, defaults.relay_retry_window) == (10.0, 86400.0)
    assert build_senders(defaults) == {}


def test_a_webhook_url_without_a_secret_is_refused_without_echoing_the_url() -> None:
    with pytest.raises(ValueError) as refused:
        Settings.from_environment({"TOLLGATE_WEBHOOK_GATEWAY_URL": "https://user:pw@pg.example/hook"})
    assert "TOLLGATE_WEBHOOK_SECRET" in str(refused.value) and "pw@" not in str(refused.value)


@pytest.mark.parametrize("variable, value", [
    ("TOLLGATE_RELAY_RETRY_BASE_SECONDS", "0"), ("TOLLGATE_RELAY_RETRY_WINDOW_SECONDS", "soon"),
    ("TOLLGATE_RELAY_BATCH", "0"), ("TOLLGATE_WEBHOOK_TIMEOUT_SECONDS", "-1"),
    ("TOLLGATE_RELAY_CONCURRENCY", "many"), ("TOLLGATE_WEBHOOK_SMS_URL", "ftp://sms.example")])
def test_bad_delivery_settings_fail_at_start_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Settings.from_environment({variable: value, "TOLLGATE_WEBHOOK_SECRET": SECRET})


def test_the_signature_is_stripes_scheme_and_verifies() -> None:
    body = b'{"id": "ntf_1"}'
    header = sign(SECRET, body, 1_764_000_000)
    expected = hmac.new(SECRET.encode(), b"1764000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1764000000,v1={expected}"
    assert verify(SECRET, body, header, now=1_764_000_100) == 1_764_000_000


@pytest.mark.parametrize("body, header, now, problem", [
    (b'{"id": "ntf_2"}', None, 1_764_000_000, "missing"),
    (b'{"id": "ntf_2"}', "v1=abc", 1_764_000_000, "needs t="),
    (b'{"id": "ntf_1", "x": 1}', "SIGNED", 1_764_000_000, "matches"),  # tampered body
    (b'{"id": "ntf_1"}', "SIGNED", 1_764_000_301, "tolerated"),  # replayed after 5 minutes
])
def test_verify_refuses_missing_tampered_and_stale_signatures(body: bytes, header: str | None, now: int,
                                                              problem: str) -> None:
    signed = sign(SECRET, b'{"id": "ntf_1"}', 1_764_000_000)
    with pytest.raises(SignatureError, match=problem):
        verify(SECRET, body, signed if header == "SIGNED" else header, now=now)


def test_verify_accepts_any_matching_v1_during_a_secret_rotation() -> None:
    body = b"{}"
    new = sign(SECRET, body, 1_764_000_000)
    old = sign("whsec_old", body, 1_764_000_000).split(",")[1]
    assert verify(SECRET, body, f"{new.split(',')[0]},{old},{new.split(',')[1]}", now=1_764_000_000)


def test_the_readmes_standalone_verification_snippet_agrees_with_the_signer() -> None:
    import re
    import time

    from tests.helpers.paths import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
               if "def verify_tollgate_signature" in block]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    check = namespace["verify_tollgate_signature"]
    body = b'{"id":"ntf_1"}'
    now = int(time.time())
    assert check(SECRET, body, sign(SECRET, body, now))  # type: ignore[operator]
    assert not check(SECRET, body + b" ", sign(SECRET, body, now))  # type: ignore[operator]
    assert not check(SECRET, body, sign(SECRET, body, now - 301))  # type: ignore[operator]
    assert not check("whsec_other", body, sign(SECRET, body, now))  # type: ignore[operator]
