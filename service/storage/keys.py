"""Declared keys in storage: which `instance_keys` rows a unit of work's changes add, move or drop.

A workflow definition declares its keys (`keys:`, `workflows.definitions.Key`); storage knows no
workflow by name. A key's row exists while the instance holds it (its fields are set and its state
does not release it); a unique key's `unique_value` lets the database refuse a second holder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tollgate.workflows.definitions import Key

KEY_COLUMNS = ("instance", "name", "workflow", "value", "unique_value")
#: Writes a key's row whether or not the instance held that key before.
UPSERT = (" ON CONFLICT (instance, name) DO UPDATE SET value = excluded.value, "
          "unique_value = excluded.unique_value")
HOLDERS_SQL = "SELECT instance FROM instance_keys WHERE workflow = ? AND name = ? AND value = ?"
UNIQUE_HOLDER_SQL = "SELECT instance FROM instance_keys WHERE workflow = ? AND name = ? AND unique_value = ?"


def key_value(key: Key, record: Mapping[str, Any]) -> str | None:
    """The value of `key` an instance record holds (None: it holds none)."""
    return key.value(record["context"] or {}, record["state"])


def _row(instance_id: str, key: Key, workflow: str, value: str) -> tuple[Any, ...]:
    return (instance_id, key.name, workflow, value, value if key.unique else None)


def changes(keys_of: Mapping[str, tuple[Key, ...]], records: Mapping[str, Mapping[str, Any]],
            created: Iterable[str], changed: Mapping[str, Mapping[str, Any]]
            ) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    """The key rows to delete ((instance, name)) and to write (`KEY_COLUMNS`): of the `created`
    instances all they hold, of the `changed` ones (id → the record as stored) those that moved."""
    deleted: list[tuple[str, str]] = []
    written: list[tuple[Any, ...]] = []
    for instance_id in created:
        record = records.get(instance_id)
        if record is None:
            continue
        for key in keys_of.get(record["workflow"], ()):
            value = key_value(key, record)
            if value is not None:
                written.append(_row(instance_id, key, record["workflow"], value))
    for instance_id, stored in changed.items():
        record = records.get(instance_id)
        if record is None:
            continue
        for key in keys_of.get(record["workflow"], ()):
            value = key_value(key, record)
            if value == key_value(key, stored):
                continue
            if value is None:
                deleted.append((instance_id, key.name))
            else:
                written.append(_row(instance_id, key, record["workflow"], value))
    return deleted, written
