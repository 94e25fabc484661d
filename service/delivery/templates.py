"""Email templates a policy editor changes without code: Jinja2 files, Korean and English.

Each notification template that goes by email has three files per language in `templates/email/`:
`<template>.<lang>.subject.j2`, `<template>.<lang>.txt.j2` and `<template>.<lang>.html.j2`. The
bundled set ships in the wheel (`tollgate.bundled.templates()`); a file of the same name in
`$TOLLGATE_TEMPLATES_DIR` wins over the bundled one, so an editor can override one subject and keep
the rest. HTML is autoescaped; an undefined name is an error (StrictUndefined), never a blank.

What a template sees (see README "Delivery: email"):
  payload   the notification's payload (amount_due, usage_month, invoice, code, expires_at, …)
  context   the instance's context at send time (payer, grace_deadline, …)
  account   the account's signup context (email, country, name, …), {} when there is none
  customer  the account's name, else the recipient address
  recipient the address the mail goes to
  lang      "ko" or "en"
  schedule  for an invoice: usage_month, billing_month, issue_at, pay_now_from, autopay_first,
            autopay_last, pay_by, grace_deadline (instants; format them with the filters)
  delivery  stable_id and instance
Filters (service/delivery/formatting.py): money, billing_month, month_name, kst, kst_date, deadline.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import yaml

from tollgate import bundled
from tollgate.service.delivery.channels import Delivery
from tollgate.service.delivery.formatting import FILTERS, KST, LANGUAGES
from tollgate.workflows import calendar

__all__ = ["PARTS", "RenderedEmail", "TemplateProblem", "Templates", "language_of", "sample_delivery"]

#: The files of one email, by part: subject line, plain text and HTML.
PARTS = ("subject", "txt", "html")
FOLDER = "email"


class RenderedEmail(NamedTuple):
    subject: str
    text: str
    html: str
    language: str


class TemplateProblem(NamedTuple):
    """One thing wrong with a template file: where (file and line) and what."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


def language_of(account: Mapping[str, Any] | None) -> str:
    """The notice's language: the account's own `language` when it names one we write (ko or en),
    else Korean for an account residing in Korea (`country` KR, chosen at signup) and English for
    every other account. The signup context holds no language field today; `country` is required."""
    account = account or {}
    chosen = str(account.get("language") or "").lower()[:2]
    if chosen in LANGUAGES:
        return chosen
    return "ko" if str(account.get("country") or "").upper() == "KR" else "en"


def _bundled_folder() -> Path:
    return bundled.templates_path()


def _bundled_params() -> Mapping[str, Any]:
    document = yaml.safe_load(bundled.rules().read_text(encoding="utf-8"))
    return dict(document.get("params") or {})


@dataclass(frozen=True, slots=True)
class _Source:
    """One folder of templates: the override directory or the bundled one."""

    label: str
    folder: Path


class Templates:
    """Renders the email for a delivery from the template files.

    `directory` (default `$TOLLGATE_TEMPLATES_DIR`, read by the caller) overrides the bundled files
    file by file. `params` is the policy's params block (billing days and times for the schedule),
    or a function answering the active one at each render: the relay passes its runtime's active
    rules (`lambda: policy.params`), so a rules change moves the dates in the next mail; the
    bundled rules' params are only the default.
    """

    def __init__(self, directory: str | Path | None = None, *,
                 params: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
                 zone: Any = KST) -> None:
        self.sources = [_Source("bundled", _bundled_folder())]
        if directory:
            folder = Path(directory)
            if not folder.is_dir():
                raise ValueError(f"The templates directory {folder} does not exist or is not a directory.")
            self.sources.insert(0, _Source("override", folder))
        self.params = params if params is not None else _bundled_params()
        self.zone = zone
        self.environment = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(s.folder) for s in self.sources]),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                default_for_string=False, default=False),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            keep_trailing_newline=True, auto_reload=True)  # an edited file serves the next email
        self.environment.filters.update(FILTERS)

    # ── which templates exist ──────────────────────────────────────────────────────────────

    def names(self) -> list[tuple[str, str]]:
        """Every (template, language) that has at least one file in any source."""
        found = set()
        for source in self.sources:
            for path in (source.folder / FOLDER).glob("*.j2"):
                parts = path.name.split(".")
                if len(parts) == 4 and parts[2] in PARTS:
                    found.add((parts[0], parts[1]))
        return sorted(found)

    def file_of(self, template: str, lang: str, part: str) -> str:
        """The template file's name inside the sources, e.g. `email/invoice_issued.ko.subject.j2`."""
        return f"{FOLDER}/{template}.{lang}.{part}.j2"

    def path_of(self, name: str) -> Path | None:
        """The file that wins for `name` (the override's when it has one), or None."""
        for source in self.sources:
            if (source.folder / name).is_file():
                return source.folder / name
        return None

    def has(self, template: str, lang: str) -> bool:
        return all(self.path_of(self.file_of(template, lang, part)) for part in PARTS)

    # ── rendering ──────────────────────────────────────────────────────────────────────────

    def values(self, delivery: Delivery, lang: str) -> dict[str, Any]:
        """The names a template sees for this delivery (documented at the top of this module)."""
        account = dict(delivery.account or {})
        return {"payload": dict(delivery.payload), "context": dict(delivery.context), "account": account,
                "customer": str(account.get("name") or delivery.recipient),
                "recipient": delivery.recipient, "lang": lang,
                "schedule": self.schedule(delivery),
                "delivery": {"stable_id": delivery.stable_id, "instance": delivery.instance}}

    def schedule(self, delivery: Delivery) -> dict[str, Any]:
        """An invoice's dates, from its usage month and the policy's billing params, the way the
        core computes them (workflows/actions.py `issue_invoice`, `start_grace`); the context's own
        `grace_deadline` wins once grace has begun. Empty for a notice that is not about a month."""
        usage_month = delivery.payload.get("usage_month") or delivery.context.get("usage_month")
        params = self.params() if callable(self.params) else self.params
        billing = params.get("billing")
        if not usage_month or not billing:
            return {}
        month = calendar.add_months(str(usage_month), 1)
        days = billing["autopay_days"]
        payer = delivery.context.get("payer") or delivery.payload.get("payer")
        if payer == "virtual_account":
            grace = calendar.at_local(month, calendar.last_day(month), billing["grace_deadline"], self.zone)
        else:
            grace = calendar.at_local(calendar.add_months(month, 1), 1, "00:00", self.zone)
        stored = delivery.context.get("grace_deadline")
        return {
            "usage_month": str(usage_month),
            "billing_month": month,
            "issue_at": calendar.at_local(month, int(billing["issue_day"]), "00:00", self.zone),
            "pay_now_from": delivery.payload.get("pay_now_from") or calendar.at_local(
                month, int(billing["issue_day"]), billing["pay_now_from"], self.zone),
            "autopay_first": calendar.at_local(month, int(days["first"]), "00:00", self.zone),
            "autopay_last": calendar.at_local(month, int(days["last"]), "00:00", self.zone),
            # the invoice turns overdue when the last autopay day ends (timer overdue_after_autopay)
            "pay_by": calendar.add_days(calendar.at_local(month, int(days["last"]), "00:00", self.zone),
                                        1, self.zone),
            "grace_deadline": calendar.parse_instant(stored) if isinstance(stored, str) else grace,
        }

    def render(self, delivery: Delivery, lang: str | None = None) -> RenderedEmail:
        """The subject, text and HTML of the mail for `delivery`, in `lang` (default: the account's
        language; the other language when the template has only that one).

        Raises `LookupError` when no language of the template has all three files and
        `jinja2.TemplateError` (with the file and line) when a template does not render."""
        # a signup's own notices (email_verification) have no account: its context is the account
        wanted = lang or language_of(delivery.account or delivery.context)
        chosen = next((c for c in (wanted, *LANGUAGES) if self.has(delivery.template, c)), None)
        if chosen is None:
            raise LookupError(f"There is no email template '{delivery.template}': write "
                              f"{self.file_of(delivery.template, wanted, '{subject,txt,html}')}.")
        values = self.values(delivery, chosen)
        subject, text, html = (self.environment.get_template(self.file_of(delivery.template, chosen, part))
                               .render(values) for part in PARTS)
        return RenderedEmail(" ".join(subject.split()), text, html, chosen)

    # ── checking ───────────────────────────────────────────────────────────────────────────

    def check(self) -> list[TemplateProblem]:
        """Render every template in both languages with sample data; every problem, file:line."""
        problems: list[TemplateProblem] = []
        for template, lang in self.names():
            if lang not in LANGUAGES:
                problems.append(TemplateProblem(self.file_of(template, lang, "subject"), None,
                                                f"the language '{lang}' is not one of ko, en"))
                continue
            for part in PARTS:
                name = self.file_of(template, lang, part)
                path = self.path_of(name)
                if path is None:
                    problems.append(TemplateProblem(name, None, "missing: every email needs a subject, "
                                                                "a .txt and an .html file"))
                    continue
                try:
                    self.environment.get_template(name).render(
                        self.values(sample_delivery(template), lang))
                except jinja2.TemplateSyntaxError as error:
                    problems.append(TemplateProblem(str(path), error.lineno, error.message or str(error)))
                except Exception as error:  # an undefined name, a filter given a bad value, …
                    problems.append(TemplateProblem(str(path), _template_line(error, path),
                                                    f"{type(error).__name__}: {error}"))
        return problems


def _template_line(error: BaseException, path: Path) -> int | None:
    """The line of the template file in the traceback Jinja2 rewrote (its frames name the file)."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if Path(frame.filename).name == path.name]
    return lines[-1] if lines else None


#: Sample values for `tollgate templates check`: every key the bundled actions put in a payload.
SAMPLE_PAYLOAD: Mapping[str, Any] = {
    "invoice": "inv_sample", "usage_month": "2026-10", "usage": 1_334_500,
    "credit_applied": [{"credit": "cr_sample", "amount": 100_000}], "amount_due": 1_234_500,
    "payer": "autopay", "pay_now_from": "2026-11-03T14:00:00+09:00",
    "code": "123456", "expires_at": "2026-11-03T14:10:00+09:00",
}
SAMPLE_CONTEXT: Mapping[str, Any] = {
    "account": "acct_sample", "usage_month": "2026-10", "usage": 1_334_500, "amount_due": 1_234_500,
    "paid_amount": 0, "payer": "autopay", "email": "customer@example.com",
}
SAMPLE_ACCOUNT: Mapping[str, Any] = {
    "id": "acct_sample", "email": "customer@example.com", "country": "KR", "member_type": "individual",
    "name": "홍길동",
}


def sample_delivery(template: str, **changes: Any) -> Delivery:
    """A delivery of `template` with the sample values (`changes` replace fields)."""
    sample = Delivery(id=0, stable_id="ntf_sample", instance="inv_sample", workflow="invoice",
                      template=template, channel="email", recipient="customer@example.com",
                      payload=SAMPLE_PAYLOAD, context=SAMPLE_CONTEXT, account=SAMPLE_ACCOUNT,
                      created_at=datetime(2026, 11, 3, 0, 0, tzinfo=UTC), attempt=1)
    return sample._replace(**changes)

