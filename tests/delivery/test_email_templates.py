"""The email templates (templates/email/*.j2) rendered as a delivery would be: every template in
both languages, the amounts, months and KST dates a billing notice must carry, HTML escaping,
StrictUndefined, overrides from a directory, the language choice, and `tollgate templates check`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tollgate import bundled
from tollgate.service.cli import main
from tollgate.service.delivery.templates import (
    SAMPLE_CONTEXT,
    SAMPLE_PAYLOAD,
    Templates,
    language_of,
    sample_delivery,
)

#: The email notifications the bundled actions emit (workflows/actions.py, channel "email").
EMAILS = ("email_verification", "invoice_issued", "invoice_overdue", "service_suspended")


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates()


def test_every_email_the_bundled_workflows_send_has_a_template_in_both_languages(
        templates: Templates) -> None:
    actions = (Path(__file__).resolve().parents[2] / "workflows" / "actions.py").read_text()
    emitted = set(re.findall(r'step\.notify\("(\w+)", "email"', actions))
    assert emitted == set(EMAILS)
    assert templates.names() == sorted((e, lang) for e in EMAILS for lang in ("en", "ko"))


def test_the_bundled_templates_are_package_data() -> None:
    folder = bundled.templates_path()
    assert (folder / "email" / "invoice_issued.ko.subject.j2").is_file()
    assert folder.resolve() == (Path(__file__).resolve().parents[2] / "templates").resolve()


@pytest.mark.parametrize("lang", ["ko", "en"])
@pytest.mark.parametrize("template", EMAILS)
def test_every_template_renders_a_subject_text_and_html(
        templates: Templates, template: str, lang: str) -> None:
    email = templates.render(sample_delivery(template), lang)
    assert email.language == lang
    assert email.subject.startswith("[NAVER Cloud] ") and "\n" not in email.subject
    assert email.text.strip() and "<" not in email.text
    assert email.html.lstrip().startswith("<!DOCTYPE html>") and f'<html lang="{lang}">' in email.html
    assert "ntf_sample" in email.html


def test_invoice_issued_in_korean_reads_like_a_billing_notice(templates: Templates) -> None:
    email = templates.render(sample_delivery("invoice_issued"), "ko")
    assert email.subject == "[NAVER Cloud] 2026년 10월 이용분 청구서 발행 안내 (납부하실 금액 1,234,500원)"
    for line in ("홍길동님, 안녕하세요.", "이용 요금        1,334,500원", "크레딧 차감      -100,000원",
                 "납부하실 금액    1,234,500원", "자동 결제일: 2026-11-10 (화) ~ 2026-11-14 (토)",
                 "2026-11-03 (화) 14:00 KST부터", "유예기한 2026-11-30 (월) 23:59 KST까지"):
        assert line in email.text
    assert "1,234,500원" in email.html and "2026-11-10 (화) ~ 2026-11-14 (토)" in email.html


def test_invoice_issued_in_english_reads_like_a_billing_notice(templates: Templates) -> None:
    email = templates.render(sample_delivery("invoice_issued"), "en")
    assert email.subject == "[NAVER Cloud] Your invoice for October 2026 usage: ₩1,234,500 due"
    for line in ("Amount due       ₩1,234,500", "Credits applied  -₩100,000",
                 "Autopay days: 2026-11-10 (Tue) to 2026-11-14 (Sat)", "From 2026-11-03 (Tue) 14:00 KST",
                 "2026-11-30 (Mon) 23:59 KST"):
        assert line in email.text


def test_a_virtual_account_payer_is_told_the_pay_by_date_and_the_22_00_grace_deadline(
        templates: Templates) -> None:
    delivery = sample_delivery("invoice_issued", payload={**SAMPLE_PAYLOAD, "payer": "virtual_account"},
                               context={**SAMPLE_CONTEXT, "payer": "virtual_account"})
    text = templates.render(delivery, "ko").text
    assert "납부 기한: 2026-11-14 (토) 23:59 KST" in text
    assert "유예기한 2026-11-30 (월) 22:00 KST까지" in text
    assert "자동 결제일" not in text


def test_an_invoice_covered_by_credits_says_nothing_is_due(templates: Templates) -> None:
    delivery = sample_delivery("invoice_issued", payload={**SAMPLE_PAYLOAD, "amount_due": 0})
    email = templates.render(delivery, "en")
    assert "Amount due       ₩0" in email.text and "nothing is due" in email.text
    assert "grace deadline" not in email.text


def test_the_overdue_notice_uses_the_grace_deadline_recorded_in_the_context(templates: Templates) -> None:
    context = {**SAMPLE_CONTEXT, "payer": "virtual_account", "grace_deadline": "2026-11-30T22:00:00+09:00"}
    email = templates.render(sample_delivery("invoice_overdue", context=context), "ko")
    assert email.subject == "[NAVER Cloud] 미납 안내: 2026년 10월 이용분 요금 1,234,500원"
    assert "유예기한         2026-11-30 (월) 22:00 KST" in email.text
    assert "가상계좌로 입금" in email.text


def test_the_suspension_notice_names_the_deadline_that_passed(templates: Templates) -> None:
    context = {**SAMPLE_CONTEXT, "grace_deadline": "2026-12-01T00:00:00+09:00"}
    email = templates.render(sample_delivery("service_suspended", context=context), "en")
    assert "grace\ndeadline, 2026-11-30 (Mon) 23:59 KST" in email.text
    assert "₩1,234,500 unpaid for October 2026 usage" in email.subject


def test_the_verification_code_and_its_expiry_in_kst(templates: Templates) -> None:
    email = templates.render(sample_delivery("email_verification", account=None), "ko")
    assert "인증 코드        123456" in email.text and "2026-11-03 (화) 14:10 KST" in email.text


def test_a_hostile_name_is_escaped_in_html_and_kept_in_the_text(templates: Templates) -> None:
    hostile = '<script>alert("x")</script> & Co'
    delivery = sample_delivery("invoice_issued", account={"country": "KR", "name": hostile})
    email = templates.render(delivery)
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co님" in email.html
    assert f"{hostile}님, 안녕하세요." in email.text


def test_a_subject_is_one_line_whatever_a_value_holds(templates: Templates) -> None:
    delivery = sample_delivery("invoice_issued", payload={**SAMPLE_PAYLOAD, "usage_month": "2026-10"},
                               account={"country": "US", "name": "x"})
    rendered = templates.render(delivery)
    assert "\r" not in rendered.subject and "\n" not in rendered.subject


@pytest.mark.parametrize(("account", "lang"), [
    ({"country": "KR"}, "ko"),
    ({"country": "US"}, "en"),
    ({"country": "JP"}, "en"),
    ({"country": "US", "language": "ko"}, "ko"),
    ({"country": "KR", "language": "en-GB"}, "en"),
    ({"country": "KR", "language": "fr"}, "ko"),  # a language we do not write: by country
    ({}, "en"),
    (None, "en"),
])
def test_the_language_is_the_accounts_own_else_korean_for_accounts_in_korea(
        account: dict[str, str] | None, lang: str) -> None:
    assert language_of(account) == lang


def test_render_picks_the_accounts_language_and_a_signup_uses_its_own_context(templates: Templates) -> None:
    assert templates.render(sample_delivery("invoice_issued", account={"country": "US"})).language == "en"
    assert templates.render(sample_delivery("invoice_issued", account={"country": "KR"})).language == "ko"
    signup = sample_delivery("email_verification", workflow="signup", account=None,
                             context={"country": "KR", "email": "a@example.com"})
    assert templates.render(signup).language == "ko"


def _override(folder: Path, name: str, text: str) -> Path:
    path = folder / "email" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_in_the_override_directory_wins_over_the_bundled_one(tmp_path: Path) -> None:
    _override(tmp_path, "invoice_issued.en.subject.j2",
              "Invoice {{ payload.invoice }}: {{ payload.amount_due | money(lang) }}\n")
    email = Templates(tmp_path).render(sample_delivery("invoice_issued"), "en")
    assert email.subject == "Invoice inv_sample: ₩1,234,500"
    assert "Amount due       ₩1,234,500" in email.text  # the bundled text part still serves


def test_an_undefined_name_is_an_error_not_a_blank(tmp_path: Path) -> None:
    _override(tmp_path, "invoice_issued.en.subject.j2", "Due {{ payload.amount_dew }}\n")
    with pytest.raises(jinja2.UndefinedError, match="amount_dew"):
        Templates(tmp_path).render(sample_delivery("invoice_issued"), "en")


def test_a_missing_template_is_a_lookup_error_naming_the_files(templates: Templates) -> None:
    with pytest.raises(LookupError, match=r"no email template 'charge_request'.*charge_request\.ko"):
        templates.render(sample_delivery("charge_request"), "ko")


def test_a_missing_override_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Templates(tmp_path / "nowhere")


# ── tollgate templates check ─────────────────────────────────────────────────────────────────

def test_templates_check_passes_the_bundled_templates(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLGATE_TEMPLATES_DIR", raising=False)
    assert main(["templates", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the bundled templates: OK — 4 emails in 8 language versions")


def test_templates_check_reports_every_problem_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = _override(tmp_path, "invoice_overdue.ko.txt.j2", "{{ customer }}님\n\n"
                     "미납 금액 {{ payload.amount_due | money(lang) }}\n{{ payload.amout }}\n")
    unclosed = _override(tmp_path, "invoice_issued.en.html.j2", "<p>\n{% if payload.amount_due %}\n</p>\n")
    _override(tmp_path, "welcome.ko.subject.j2", "환영합니다\n")  # no text and HTML part
    assert main(["templates", "check", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{typo}:4: UndefinedError: 'dict object' has no attribute 'amout'" in lines
    assert any(line.startswith(f"{unclosed}:3: Unexpected end of template") for line in lines), lines
    assert "email/welcome.ko.txt.j2: missing: every email needs a subject, a .txt and an .html file" in lines
    assert lines[-1] == (f"{tmp_path} over the bundled templates: 4 problems; "
                         "fix them before the next email is sent.")


def test_templates_check_reads_the_directory_from_the_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _override(tmp_path, "invoice_issued.ko.subject.j2", "{{ nope }}\n")
    monkeypatch.setenv("TOLLGATE_TEMPLATES_DIR", str(tmp_path))
    assert main(["templates", "check"]) == 1
    assert "invoice_issued.ko.subject.j2:1: UndefinedError: 'nope' is undefined" in capsys.readouterr().out


def test_an_edited_override_serves_the_next_email_without_a_restart(tmp_path: Path) -> None:
    path = _override(tmp_path, "invoice_issued.en.subject.j2", "First {{ payload.invoice }}\n")
    templates = Templates(tmp_path)
    assert templates.render(sample_delivery("invoice_issued"), "en").subject == "First inv_sample"
    path.write_text("Second {{ payload.invoice }}\n", encoding="utf-8")
    stat = path.stat()  # make sure the modification time moves even on a coarse clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert templates.render(sample_delivery("invoice_issued"), "en").subject == "Second inv_sample"


def test_the_schedule_follows_the_active_rules_params(rules_data: Any) -> None:
    params = rules_data()["params"]
    active = {"params": params}
    templates = Templates(params=lambda: active["params"])
    before = templates.render(sample_delivery("invoice_issued"), "en").text
    assert "2026-11-10 (Tue) to 2026-11-14 (Sat)" in before
    changed = {**params, "billing": {**params["billing"], "autopay_days": {"first": 12, "last": 16}}}
    active["params"] = changed
    text = templates.render(sample_delivery("invoice_issued"), "en").text
    assert "Autopay days: 2026-11-12 (Thu) to 2026-11-16 (Mon)" in text
