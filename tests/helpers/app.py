"""The Flask app under test: the bundled rules, a token for every role and pinned real time.

Shared by the API tests (tests/api/conftest.py) and the service tests that start the app the way
a gunicorn worker does; `python -c` children of a test import it too.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from tests.helpers.kst import kst_instant
from tests.helpers.paths import RULES_PATH

API_TOKENS = {"viewer": "tok-viewer", "operator": "tok-operator", "policy_editor": "tok-editor",
              "gateway": "tok-gateway", "admin": "tok-admin", "monitor": "tok-monitor"}
API_NOW = kst_instant(2025, 3, 5, 12)  # real time, pinned, for instances without a test clock


def make_app(database_url: str, **overrides: Any) -> Flask:
    """An app over `database_url` with the bundled rules, the test tokens and pinned real time."""
    from tollgate.service.app import create_app

    config = {"TESTING": True, "DATABASE_URL": database_url, "RULES": str(RULES_PATH),
              "TOKENS": ",".join(f"{role}={token}" for role, token in API_TOKENS.items()),
              "NOW": lambda: API_NOW, **overrides}
    return create_app(config)


def dispose_app(app: Flask) -> None:
    """Close the app's database connections."""
    app.extensions["tollgate"].db.dispose()
