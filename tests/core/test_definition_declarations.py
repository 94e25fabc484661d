"""What the definitions declare instead of code knowing workflows by name: the prefix of generated
instance ids and which workflow's instances are the accounts others reference."""

from __future__ import annotations

import yaml

from tollgate import bundled
from tollgate.service.application.policy_files import definitions, schema
from tollgate.workflows.definitions import parse_definition


def test_the_bundled_workflows_declare_their_id_prefixes_and_the_account_workflow() -> None:
    loaded = definitions()
    assert {name: d.id_prefix for name, d in loaded.items()} == {
        "signup": "acct", "payment_method": "pm", "credit": "cr", "invoice": "inv"}
    assert [name for name, d in loaded.items() if d.is_account] == ["signup"]
    assert all(d.references_account for name, d in loaded.items() if not d.is_account)


def test_without_declarations_the_prefix_is_the_workflow_name_and_it_holds_no_accounts() -> None:
    raw = yaml.safe_load((bundled.definitions() / "credit.yaml").read_text(encoding="utf-8"))
    del raw["id_prefix"]
    credit = parse_definition(yaml.safe_dump(raw), "credit.yaml", schema("workflow.schema.json"))
    assert credit.id_prefix == "credit"
    assert credit.is_account is False
