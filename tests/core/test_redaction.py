"""workflows/secrets.py: secret fields are the writeOnly properties, and no redaction quotes them."""

from __future__ import annotations

from jsonschema import Draft202012Validator

from tollgate.service.application.policy_files import definitions
from tollgate.workflows.documents import data_problems
from tollgate.workflows.exceptions import Reason
from tollgate.workflows.secrets import REDACTED, redact_payload, redact_reasons, write_only_fields

SECRET = "Tr0ub4dor&3"


def test_the_secret_fields_of_signup_are_its_write_only_properties() -> None:
    signup = definitions()["signup"]
    assert signup.secret_fields == {"password", "password_confirm", "code"}
    assert signup.secret_fields == write_only_fields(e.data_schema for e in signup.events.values())
    assert all(not d.secret_fields for name, d in definitions().items() if name != "signup")


def test_a_schema_error_about_an_object_holding_a_secret_does_not_print_the_object() -> None:
    validator = Draft202012Validator({"type": "object", "maxProperties": 1, "properties": {
        "password": {"type": "string", "writeOnly": True}, "note": {"type": "string"}}})
    data = {"password": SECRET, "note": "hello"}
    [problem] = data_problems(validator, data, "event.data", frozenset({"password"}))
    assert SECRET not in problem.message and "maxProperties" in problem.message
    [plain] = data_problems(validator, data, "event.data")  # without secrets, the message is jsonschema's
    assert SECRET in plain.message


def test_only_reasons_with_an_error_detail_are_rewritten_and_only_when_the_data_holds_a_secret() -> None:
    failed = Reason("password_policy", "비밀번호", "The password is too weak.")
    erred = Reason("probe", "검사", "The probe.", f"The rule could not be evaluated: ts('{SECRET}')")
    kept, redacted = redact_reasons([failed, erred], {"password": SECRET}, frozenset({"password"}))
    assert kept is failed and redacted.rule == "probe"
    assert redacted.detail is not None and SECRET not in redacted.detail and "password" in redacted.detail
    assert redact_reasons([erred], {"note": "x"}, frozenset({"password"})) == [erred]


def test_a_payload_keeps_every_field_but_the_templates_secret_ones() -> None:
    payload = {"code": "123456", "expires_at": "2026-10-20T03:10:00+00:00"}
    assert redact_payload("email_verification", payload) == {"code": REDACTED,
                                                             "expires_at": payload["expires_at"]}
    assert redact_payload("invoice_issued", {"code": "X1"}) == {"code": "X1"}
