"""Secret fields: declared once, redacted by one set of functions wherever data can be echoed.

Event-data fields are secret when their property schema in `workflows/definitions/*.yaml` says
`writeOnly: true` (JSON Schema's own word for "sent, never returned"); notification payload and
instance context fields are secret when `SECRET_PAYLOAD_FIELDS` / `SECRET_CONTEXT_FIELDS` name
them. Every path that can echo data goes through this module: history rows and dry-run answers
(`redact`), schema-validation errors (`value_free_message`), guard errors (`redact_reasons`), the
outbox read by roles that may not see codes (`redact_payload`) and instances as the API shows
them (`redact_context`). A digest of a request is keyed instead (`Runtime.fingerprint`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from jsonschema import ValidationError

from tollgate.workflows.exceptions import Reason

REDACTED = "[redacted]"

#: Payload fields of each notification template that only the recipient may read (and, through
#: the API, the roles `service/api/notifications.py` reveals them to).
SECRET_PAYLOAD_FIELDS: Mapping[str, frozenset[str]] = {"email_verification": frozenset({"code"})}

#: Context fields of each workflow that no API answer shows: the digest of the six-digit email
#: code (`send_email_code`) is reversed by trying the million candidates, so it is the code.
SECRET_CONTEXT_FIELDS: Mapping[str, frozenset[str]] = {"signup": frozenset({"email_code_hash"})}

#: Keywords whose standard message names only keys of the object, never a value.
_KEY_ONLY = frozenset({"required", "additionalProperties", "propertyNames", "dependentRequired"})


def write_only_fields(data_schemas: Iterable[Any]) -> frozenset[str]:
    """The top-level properties marked `writeOnly: true` in the event-data schemas of a workflow."""
    fields: set[str] = set()
    for schema in data_schemas:
        properties = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
        fields.update(name for name, sub in properties.items()
                      if isinstance(sub, Mapping) and sub.get("writeOnly") is True)
    return frozenset(fields)


def redact(data: Mapping[str, Any], fields: Collection[str]) -> dict[str, Any]:
    """A copy of `data` with the value of every secret field replaced by `REDACTED`."""
    if not fields:
        return dict(data)
    return {k: (REDACTED if k in fields else v) for k, v in data.items()}


def holds_secret(data: Any, fields: Collection[str]) -> bool:
    """Whether `data` is an object carrying one of the secret fields."""
    return bool(fields) and isinstance(data, Mapping) and any(k in fields for k in data)


def redact_reasons(reasons: Iterable[Reason], data: Any, fields: Collection[str]) -> list[Reason]:
    """Reasons whose detail (the error of a rule that could not be evaluated) is withheld when the
    event data carries a secret: a CEL or helper error quotes its operands (`ts('…')`, a regex,
    a missing map key), so no text of an error over such data can be shown or stored."""
    reasons = list(reasons)
    if not holds_secret(data, fields) or not any(r.detail for r in reasons):
        return reasons
    names = ", ".join(sorted(k for k in data if k in fields))
    detail = (f"The rule could not be evaluated; the error is not shown because the event data holds "
              f"the secret field(s) {names}. Evaluate the expression on test data to see it.")
    return [Reason(r.rule, r.ko, r.en, detail) if r.detail else r for r in reasons]


def touches_secret(error: ValidationError, fields: Collection[str]) -> bool:
    """Whether a schema error's standard message could quote a secret value: the error is at or
    under a secret field, or about an object holding one (its message may print the object)."""
    path = error.absolute_path
    if path and path[0] in fields:
        return True
    return error.validator not in _KEY_ONLY and holds_secret(error.instance, fields)


_PHRASES = {
    "type": "is not of type {v!r}",
    "maxLength": "is longer than {v} characters",
    "minLength": "is shorter than {v} characters",
    "pattern": "does not match the pattern {v!r}",
    "format": "is not a valid {v}",
    "enum": "is not one of the allowed values",
    "const": "is not the required value",
    "minimum": "is less than the minimum of {v}",
    "maximum": "is more than the maximum of {v}",
}


def value_free_message(error: ValidationError) -> str:
    """What is wrong, said from the schema alone (keyword and bound), never quoting the value."""
    phrase = _PHRASES.get(str(error.validator), "does not satisfy the schema keyword '{k}'")
    return ("the value (not shown: secret) "
            + phrase.format(v=error.validator_value, k=error.validator))


def redact_payload(template: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """A notification payload with the template's secret fields redacted."""
    fields = SECRET_PAYLOAD_FIELDS.get(template)
    if not fields or not holds_secret(payload, fields):
        return payload
    return redact(payload, fields)


def redact_context(workflow: str, context: Mapping[str, Any]) -> Mapping[str, Any]:
    """An instance's context as the API shows it: the workflow's secret context fields redacted."""
    fields = SECRET_CONTEXT_FIELDS.get(workflow)
    if not fields or not holds_secret(context, fields):
        return context
    return redact(context, fields)
