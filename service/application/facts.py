"""Providers of the named facts the workflow definitions declare (other instances' data).

The core never queries: for each event, the application asks exactly the providers of the facts
the definition declares for that event and passes the answers in the snapshot. Providers read
through a `FactReader` (the unit of work), so they see the changes made earlier in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tollgate.service.storage.keys import HOLDERS_SQL, key_value
from tollgate.workflows.definitions import Definition, Key


class FactReader(Protocol):
    """What a provider reads: the instances as the current transaction sees them (the unit of
    work of `service/storage/unit_of_work.py` is one)."""

    records: dict[str, dict[str, Any]]

    def find(self, instance_id: str) -> dict[str, Any] | None: ...

    def related(self, account: str, workflow: str) -> list[dict[str, Any]]: ...

    def fetch(self, sql: str, params: list[Any]) -> list[Any]: ...


FactProvider = Callable[[FactReader, Mapping[str, Any], Mapping[str, Any]], Any]
"""(the reader, the instance record, the event data) → the fact's value."""


def key_taken(key: Key, workflow: str) -> FactProvider:
    """The provider of a fact declared with `key:` (e.g. signup's `email_taken`): whether another
    instance of `workflow` holds `key` with the value the event data gives (its fields, by name),
    as this transaction sees them — stored holders, and the instances changed in it."""

    def taken(uow: FactReader, record: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
        value = key.value(data)
        if value is None:
            return False
        stored = uow.fetch(HOLDERS_SQL, [workflow, key.name, value])
        candidates = {row[0] for row in stored}
        candidates.update(i for i, r in uow.records.items()
                          if r["workflow"] == workflow and key_value(key, r) == value)
        candidates.discard(record["id"])
        for other_id in candidates:
            other = uow.find(other_id)
            if other is not None and key_value(key, other) == value:
                return True
        return False

    return taken


def _account_of(record: Mapping[str, Any]) -> str:
    return str(record["context"].get("account") or record.get("account"))


def credit_granted(uow: FactReader, record: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    return any(other["id"] != record["id"] and "granted_at" in (other["context"] or {})
               for other in uow.related(_account_of(record), "credit"))


def credits(uow: FactReader, record: Mapping[str, Any], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    active = [{"id": c["id"], "balance": int(c["context"].get("balance", 0)),
               "expires_at": c["context"]["expires_at"]}
              for c in uow.related(_account_of(record), "credit") if c["state"] == "active"]
    return sorted(active, key=lambda c: (c["expires_at"], c["id"]))


def payable_methods(uow: FactReader, record: Mapping[str, Any], data: Mapping[str, Any]) -> int:
    return sum(1 for m in uow.related(_account_of(record), "payment_method") if m["state"] == "active")


def active_payment_methods(uow: FactReader, record: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """For a signup (the account itself): the ids of its active payment methods, sorted."""
    return sorted(m["id"] for m in uow.related(record["id"], "payment_method") if m["state"] == "active")


PROVIDERS: dict[str, FactProvider] = {
    "credit_granted": credit_granted,
    "credits": credits,
    "payable_methods": payable_methods,
    "active_payment_methods": active_payment_methods,
}

#: Which workflows' instances each fact reads, so a batch can prefetch them for many accounts.
RELATED_WORKFLOWS: dict[str, tuple[str, ...]] = {
    "credit_granted": ("credit",),
    "credits": ("credit",),
    "payable_methods": ("payment_method",),
    "active_payment_methods": ("payment_method",),
}


def missing_providers(definitions: Mapping[str, Definition]) -> list[str]:
    """Facts a definition declares that no provider here answers (checked at start-up)."""
    return [f"{d.name}.{fact}" for d in definitions.values() for fact in d.facts
            if fact not in PROVIDERS and fact not in d.fact_keys]


def provider(definition: Definition, name: str) -> FactProvider:
    """The provider of the fact `name` of `definition`: the generic one of a declared key, or the
    named one of `PROVIDERS`."""
    key = definition.fact_keys.get(name)
    return PROVIDERS[name] if key is None else key_taken(definition.keys[key], definition.name)


_FACTS_FOR: dict[tuple[int, str], tuple[Definition, tuple[str, ...]]] = {}


def facts_for(definition: Definition, event: str) -> tuple[str, ...]:
    """`definition.facts_for(event)`, remembered (definitions are immutable once loaded)."""
    key = (id(definition), event)
    known = _FACTS_FOR.get(key)
    if known is None or known[0] is not definition:
        known = _FACTS_FOR[key] = (definition, definition.facts_for(event))
    return known[1]


def providers_for(definition: Definition, event: str) -> tuple[tuple[str, FactProvider], ...]:
    """(fact name, provider) for each fact `definition` declares for `event`."""
    return tuple((name, provider(definition, name)) for name in facts_for(definition, event))


def gather(uow: FactReader, definition: Definition, event: str, record: Mapping[str, Any],
           data: Mapping[str, Any]) -> dict[str, Any]:
    names = facts_for(definition, event)
    if not names:
        return {}
    return {name: provider(definition, name)(uow, record, data) for name in names}
