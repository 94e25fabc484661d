"""The HTTP test client of the API tests: a role's bearer token, and shortcuts that assert success."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers.app import API_TOKENS


class Api:
    """The test client with a role's bearer token, plus shortcuts that assert success."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def call(self, method: str, path: str, *, role: str | None = "admin", **kwargs: Any) -> TestResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if role is not None:
            headers.setdefault("Authorization", f"Bearer {API_TOKENS[role]}")
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.call("PUT", path, **kwargs)

    def create(self, workflow: str, context: Mapping[str, Any] | None = None,
               **fields: Any) -> dict[str, Any]:
        body = {"context": dict(context or {}), **fields}
        response = self.post(f"/workflows/{workflow}/instances", json=body)
        assert response.status_code == 201, response.get_json()
        created: dict[str, Any] = response.get_json()
        return created

    def fire(self, instance: str, event: str, data: Mapping[str, Any] | None = None, *,
             status: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.post(f"/instances/{instance}/events", json={"event": event, "data": dict(data or {})},
                             **kwargs)
        assert response.status_code == status, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    def clock(self, now: datetime) -> str:
        response = self.post("/clocks", json={"now": now.isoformat()})
        assert response.status_code == 201, response.get_json()
        return str(response.get_json()["id"])

    def signup(self, *, clock: str | None = None, email: str | None = None, password: str = "Secret#2025",
               country: str = "KR", member_type: str = "individual") -> str:
        """A signup driven to `payment_method_required`; returns its id."""
        fields = {"clock": clock} if clock else {}
        account = str(self.create("signup", **fields)["id"])
        self.fire(account, "select_type", {"country": country, "member_type": member_type,
                                           "birth_date": "1990-01-01"})
        self.fire(account, "submit_email", {"email": email or f"{account}@example.com"})
        code = self.get(f"/notifications?instance={account}").get_json()["items"][-1]["payload"]["code"]
        self.fire(account, "verify_email", {"code": code})
        self.fire(account, "set_password", {"password": password, "password_confirm": password})
        return account

    def register_card(self, account: str) -> str:
        """A personal credit card registered on the web for `account`; returns the payment_method id."""
        pm = str(self.create("payment_method", {"account": account, "channel": "web"})["id"])
        self.fire(pm, "select_method", {"method": "credit_card", "card_type": "personal",
                                        "card_owner": "person"})
        self.fire(pm, "verify_phone", {"owner_match": True})
        self.fire(pm, "register", {"agree_payment_info": True, "agree_recurring": True})
        return pm


