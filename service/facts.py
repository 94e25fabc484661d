"""Providers of the named facts the workflow definitions declare (other instances' data).

The core never queries: for each event, the runtime asks exactly the providers of the facts the
definition declares for that event and passes the answers in the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, func, select

from service.tables import instances
from workflows.definitions import Definition

FactProvider = Callable[[Connection, Mapping[str, Any], Mapping[str, Any]], Any]
"""(connection, the instance row as a mapping, the event data) → the fact's value."""


def email_taken(conn: Connection, row: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    email = str(data.get("email", "")).strip().lower()
    query = (select(func.count()).select_from(instances)
             .where(instances.c.workflow == "signup", instances.c.email == email,
                    instances.c.id != row["id"], instances.c.state != "expired"))
    return bool(conn.execute(query).scalar_one())


def _account_instances(conn: Connection, row: Mapping[str, Any], workflow: str) -> list[Any]:
    account = row["context"].get("account") if row.get("context") else row.get("account")
    query = select(instances.c.id, instances.c.state, instances.c.context).where(
        instances.c.account == account, instances.c.workflow == workflow)
    return list(conn.execute(query))


def credit_granted(conn: Connection, row: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    return any(other.id != row["id"] and "granted_at" in (other.context or {})
               for other in _account_instances(conn, row, "credit"))


def credits(conn: Connection, row: Mapping[str, Any], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    active = [{"id": c.id, "balance": int(c.context.get("balance", 0)), "expires_at": c.context["expires_at"]}
              for c in _account_instances(conn, row, "credit") if c.state == "active"]
    return sorted(active, key=lambda c: (c["expires_at"], c["id"]))


def payable_methods(conn: Connection, row: Mapping[str, Any], data: Mapping[str, Any]) -> int:
    account = row["context"].get("account")
    query = (select(func.count()).select_from(instances)
             .where(instances.c.account == account, instances.c.workflow == "payment_method",
                    instances.c.state == "active"))
    return int(conn.execute(query).scalar_one())


PROVIDERS: dict[str, FactProvider] = {
    "email_taken": email_taken,
    "credit_granted": credit_granted,
    "credits": credits,
    "payable_methods": payable_methods,
}


def missing_providers(definitions: Mapping[str, Definition]) -> list[str]:
    """Facts a definition declares that no provider here answers (checked at start-up)."""
    return [f"{d.name}.{fact}" for d in definitions.values() for fact in d.facts if fact not in PROVIDERS]


def gather(conn: Connection, definition: Definition, event: str, row: Mapping[str, Any],
           data: Mapping[str, Any]) -> dict[str, Any]:
    return {name: PROVIDERS[name](conn, row, data) for name in definition.facts_for(event)}
