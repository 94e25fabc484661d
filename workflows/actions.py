"""Named actions: what an applied event does to the instance beyond changing its state.

Definitions name these (`prepare`, `actions`, `on_denied`); a name missing here fails when the
definition loads. Actions read numbers from `step.params` (rules.yaml), never from constants, and
touch nothing outside the `Step`: no I/O, no wall clock; randomness and password hashing come
from the `Step` (`step.rng`, `step.hasher`: the caller's, `workflows/ports.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from types import CodeType
from typing import Any

from tollgate.workflows import calendar
from tollgate.workflows.exceptions import BadRequest, Problem
from tollgate.workflows.limits import MAX_AMOUNT
from tollgate.workflows.outcome import Step

Action = Callable[[Step], None]
ACTIONS: dict[str, Action] = {}

def action(fn: Action) -> Action:
    ACTIONS[fn.__name__] = fn
    return fn


#: The `Step` attributes through which an action sees the referenced account.
ACCOUNT_ATTRIBUTES = frozenset({"account", "email", "phone"})


def reads_account(fn: Action) -> bool:
    """Whether the action's code names `step.account`, `step.email` or `step.phone` (in its own
    body or in a comprehension or function nested in it).

    The runtime reads the accounts of a batch in one query only for events whose expressions or
    actions read them; any other event gets the account on first use, so an action that reaches
    the account some other way (a helper function) is still right, only slower.
    """
    def names(code: CodeType) -> bool:
        return bool(ACCOUNT_ATTRIBUTES & set(code.co_names)) or any(
            names(const) for const in code.co_consts if isinstance(const, CodeType))
    return names(fn.__code__)


@lru_cache(maxsize=4096)
def stamp(moment: datetime) -> str:
    """RFC 3339 with offset, in UTC, to the second (remembered: one event stamps its instant
    several times, and a billing run stamps one instant a million times)."""
    return calendar.as_utc(moment).replace(microsecond=0).isoformat()


def code_digest(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


# ── signup ────────────────────────────────────────────────────────────────────────────────────

@action
def store_type(step: Step) -> None:
    step.context["country"] = step.data["country"]
    step.context["member_type"] = step.data["member_type"]
    if "birth_date" in step.data:
        step.context["birth_date"] = step.data["birth_date"]


@action
def store_email(step: Step) -> None:
    step.context["email"] = step.data["email"].strip().lower()


@action
def send_email_code(step: Step) -> None:
    code = f"{step.rng.randrange(10**6):06d}"
    ttl = step.param("signup.email_code_ttl_minutes")
    expires = calendar.add_hours(step.now, ttl / 60)
    step.context.update(email_code_hash=code_digest(code), email_code_expires_at=stamp(expires),
                        email_code_attempts=0)
    step.notify("email_verification", "email", step.context["email"],
                {"code": code, "expires_at": stamp(expires)})


@action
def count_email_code_attempt(step: Step) -> None:
    step.context["email_code_attempts"] = int(step.context.get("email_code_attempts", 0)) + 1


@action
def mark_email_verified(step: Step) -> None:
    for key in ("email_code_hash", "email_code_expires_at", "email_code_attempts"):
        step.context.pop(key, None)
    step.context["email_verified_at"] = stamp(step.now)


@action
def store_password_hash(step: Step) -> None:
    step.secrets["password_hash"] = step.hasher.hash(step.data["password"])
    step.context["password_set_at"] = stamp(step.now)


@action
def mark_payment_registered(step: Step) -> None:
    step.context.setdefault("activated_at", stamp(step.now))


@action
def update_profile(step: Step) -> None:
    for key in ("name", "business_number", "phone"):
        if key in step.data:
            step.context[key] = step.data[key]


@action
def hold_payment_methods_of_new_partner(step: Step) -> None:
    """A member who becomes a partner cannot pay with the methods it registered before either:
    each active one is sent `account_became_partner`, where `partner_not_payable` routes it back to
    support (`pending_support`). Setting the flag again, or clearing it, sends nothing."""
    if step.data["partner"] and not step.context.get("partner"):
        for method in step.facts.get("active_payment_methods", ()):  # absent: a snapshot without methods
            step.send(method, "account_became_partner", {})


@action
def store_partner(step: Step) -> None:
    step.context["partner"] = bool(step.data["partner"])


@action
def store_restriction(step: Step) -> None:
    step.context["restriction_reason"] = step.data["reason"]
    step.context["restricted_at"] = stamp(step.now)


@action
def clear_restriction(step: Step) -> None:
    step.context.pop("restriction_reason", None)
    step.context.pop("restricted_at", None)


# ── payment method ────────────────────────────────────────────────────────────────────────────

_METHOD_FIELDS = ("method", "card_type", "card_owner", "named", "issued_overseas", "three_d_secure")


@action
def store_method(step: Step) -> None:
    for key in _METHOD_FIELDS:
        step.context.pop(key, None)
        if key in step.data:
            step.context[key] = step.data[key]


@action
def mark_phone_verified(step: Step) -> None:
    step.context["phone_verified_at"] = stamp(step.now)


@action
def store_consents(step: Step) -> None:
    step.context["consents"] = {"payment_info": True, "recurring": True, "at": stamp(step.now)}
    step.context["registered_at"] = stamp(step.now)


@action
def notify_account_registered(step: Step) -> None:
    step.send(step.context["account"], "payment_method_registered", {"payment_method": step.instance_id})


# ── credit ────────────────────────────────────────────────────────────────────────────────────

@action
def grant_credit(step: Step) -> None:
    amount = int(step.param("credit.amount"))
    expires = calendar.add_calendar_months(step.now, int(step.param("credit.valid_months")), step.zone)
    step.context.update(
        service_area=step.data["service_area"], signup_path=step.data["signup_path"],
        marketing_consent=True, amount=amount, balance=amount, granted_at=stamp(step.now),
        expires_at=stamp(expires), consumed=[])


@action
def consume_credit(step: Step) -> None:
    balance = int(step.context.get("balance", 0))
    used = min(int(step.data["amount"]), balance)
    step.context["balance"] = balance - used
    step.context["consumed"] = [*step.context.get("consumed", []),
                                {"invoice": step.data["invoice"], "amount": used, "at": stamp(step.now)}]


@action
def revoke_credit(step: Step) -> None:
    step.context.update(revoked_reason=step.data["reason"], revoked_at=stamp(step.now),
                        revoked_balance=int(step.context.get("balance", 0)), balance=0)
    step.send(step.context["account"], "restrict", {"reason": f"credit revoked: {step.data['reason']}"})


# ── invoice ───────────────────────────────────────────────────────────────────────────────────

@action
def add_usage(step: Step) -> None:
    usage = int(step.context.get("usage", 0)) + int(step.data["amount"])
    if usage > MAX_AMOUNT:  # each amount is bounded by its schema; their sum is bounded here
        raise BadRequest(f"The amount {step.data['amount']} would bring the invoice's usage to {usage:,} "
                         f"KRW, over the {MAX_AMOUNT:,} KRW one invoice may hold; check the amount.",
                         [Problem("$.amount", f"the usage total {usage} would exceed {MAX_AMOUNT}",
                                  file="add_usage.data")])
    step.context["usage"] = usage


def _expiry_order(credit: Mapping[str, Any]) -> tuple[datetime, str]:
    """Sort key of a credit fact: its expiry as an instant (texts with different offsets do not
    sort by time), then its id."""
    expires = credit["expires_at"]
    instant = expires if isinstance(expires, datetime) else calendar.parse_instant(str(expires))
    return calendar.as_utc(instant), str(credit["id"])


@action
def compute_amount_due(step: Step) -> None:
    """Apply the account's active credits, earliest expiry first, then set amount_due and payer."""
    remaining = int(step.context.get("usage", 0))
    applied = []
    for credit in sorted(step.facts.get("credits", []), key=_expiry_order):
        if remaining <= 0:
            break
        take = min(remaining, int(credit["balance"]))
        if take > 0:
            applied.append({"credit": credit["id"], "amount": take})
            remaining -= take
    payable = int(step.facts.get("payable_methods", 0)) > 0
    step.context.update(usage=int(step.context.get("usage", 0)), credit_applied=applied,
                        amount_due=remaining, paid_amount=0,
                        payer="autopay" if payable else "virtual_account")


@action
def issue_invoice(step: Step) -> None:
    step.context["issued_at"] = stamp(step.now)
    for item in step.context.get("credit_applied", []):
        step.send(item["credit"], "consume", {"amount": item["amount"], "invoice": step.instance_id})
    billing_month = calendar.add_months(step.context["usage_month"], 1)
    pay_now_from = calendar.at_local(billing_month, int(step.param("billing.issue_day")),
                                     step.param("billing.pay_now_from"), step.zone)
    payload = {"invoice": step.instance_id, "usage_month": step.context["usage_month"],
               "usage": step.context["usage"], "credit_applied": step.context["credit_applied"],
               "amount_due": step.context["amount_due"], "payer": step.context["payer"],
               "pay_now_from": stamp(pay_now_from)}
    step.notify("invoice_issued", "email", step.email, payload)
    step.notify("invoice_issued", "sms", step.phone, payload)
    if step.context["amount_due"] <= 0:
        step.context["paid_at"] = stamp(step.now)
        step.context["paid_by"] = "credit"


@action
def request_charge(step: Step) -> None:
    attempts = int(step.context.get("autopay_attempts", 0)) + 1
    step.context["autopay_attempts"] = attempts
    step.notify("charge_request", "gateway", "payment_gateway",
                {"invoice": step.instance_id, "account": step.context["account"],
                 "amount": step.context["amount_due"] - step.context.get("paid_amount", 0),
                 "attempt": attempts})


@action
def record_charge(step: Step) -> None:
    step.context.update(payment_ref=step.data["payment_ref"], paid_at=stamp(step.now),
                        paid_amount=step.context["amount_due"], paid_by="autopay")


@action
def record_charge_failure(step: Step) -> None:
    step.context["charge_failures"] = [*step.context.get("charge_failures", []),
                                       {"reason": step.data["reason"], "at": stamp(step.now)}]


@action
def record_pay_now(step: Step) -> None:
    step.context.update(paid_amount=int(step.context.get("paid_amount", 0)) + int(step.data["amount"]),
                        paid_at=stamp(step.now), paid_by="pay_now")


@action
def record_deposit(step: Step) -> None:
    deposited_at = stamp(calendar.parse_instant(step.data["deposited_at"]))
    deposits = [*step.context.get("deposits", []), {"amount": int(step.data["amount"]),
                                                     "deposited_at": deposited_at,
                                                     "reported_at": stamp(step.now)}]
    paid = int(step.context.get("paid_amount", 0)) + int(step.data["amount"])
    step.context.update(deposits=deposits, paid_amount=paid)
    if paid >= int(step.context.get("amount_due", 0)):
        step.context.update(paid_at=deposited_at, paid_by="deposit")


@action
def notify_overdue(step: Step) -> None:
    step.context["overdue_at"] = stamp(step.now)
    step.notify("invoice_overdue", "email", step.email,
                {"invoice": step.instance_id, "usage_month": step.context["usage_month"],
                 "amount_due": step.context["amount_due"] - step.context.get("paid_amount", 0)})


@action
def start_grace(step: Step) -> None:
    """Record the grace deadline: 22:00 of the billing month's last day for virtual-account
    payers (suspension decided only after the deposit lag), the end of that day for autopay."""
    billing_month = calendar.add_months(step.context["usage_month"], 1)
    if step.context.get("payer") == "virtual_account":
        deadline = calendar.at_local(billing_month, calendar.last_day(billing_month),
                                     step.param("billing.grace_deadline"), step.zone)
        decide = calendar.add_hours(deadline, int(step.param("billing.deposit_reflection_hours")))
    else:
        deadline = calendar.at_local(calendar.add_months(billing_month, 1), 1, "00:00", step.zone)
        decide = deadline
    step.context.update(grace_started_at=stamp(step.now), grace_deadline=stamp(deadline),
                        suspend_after=stamp(decide))


@action
def notify_suspended(step: Step) -> None:
    step.context["suspended_at"] = stamp(step.now)
    step.notify("service_suspended", "email", step.email,
                {"invoice": step.instance_id, "usage_month": step.context["usage_month"],
                 "amount_due": step.context["amount_due"] - step.context.get("paid_amount", 0)})
