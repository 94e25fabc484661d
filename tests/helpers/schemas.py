"""Answers checked against the published API schemas (`schemas/api/*.json`, embedded in /openapi.json)."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.paths import ROOT


def assert_conforms(body: Any, schema_name: str) -> None:
    """`body` is valid against `schemas/api/<schema_name>.json` (the schema /openapi.json embeds)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    directory = ROOT / "schemas" / "api"
    documents = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in directory.glob("*.json")}
    registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in documents.values())
    validator = Draft202012Validator(documents[f"{schema_name}.json"], registry=registry)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"the body does not match {schema_name}.json: {errors}"
