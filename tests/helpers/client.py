"""The one HTTP test client of the API and end-to-end tests, over two transports.

`Client` sends requests with a role's bearer token (`role=` per call, or `as_role`) and has
shortcuts that assert the expected status (`ok`, `create`, `fire`, `clock`, `signup`, ...). What
carries a request is its transport: `WsgiTransport` calls the Flask app in process through its test
client (tests/api), `SocketTransport` talks HTTP/1.1 to a real `tollgate serve` over a loopback
socket (tests/e2e). Either way the answer is one `Response` (status_code, case-insensitive
headers, data, get_json(), text, mimetype), so a test reads the same on both.

The socket side uses only the standard library (`http.client`), one connection per request,
always closed, so tests stay clean under `filterwarnings = error`.
"""

from __future__ import annotations

import dataclasses
import http.client
import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from flask.testing import FlaskClient
from werkzeug.datastructures import Headers

from tests.helpers.app import API_TOKENS

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Response:
    """One HTTP answer, whichever transport carried it (the subset of Flask's test response the
    tests read, with the same meanings)."""

    status_code: int
    headers: Headers  # names case-insensitive
    data: bytes

    @classmethod
    def of_http(cls, answer: http.client.HTTPResponse) -> Response:
        """The answer read from a socket (the whole body)."""
        return cls(answer.status, Headers(answer.getheaders()), answer.read())

    @property
    def mimetype(self) -> str | None:
        """The content type without its parameters (None when there is none)."""
        content_type = self.headers.get("Content-Type")
        return content_type.partition(";")[0].strip() if content_type else None

    @property
    def is_json(self) -> bool:
        """application/json or application/*+json."""
        mimetype = self.mimetype
        return mimetype is not None and (mimetype == "application/json" or (
            mimetype.startswith("application/") and mimetype.endswith("+json")))

    def get_json(self) -> Any:
        """The body parsed as JSON, or None when the content type is not JSON (as Flask's)."""
        return jsonlib.loads(self.data) if self.is_json else None

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.text if as_text else self.data

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")

    def __repr__(self) -> str:  # what a failed assertion shows
        return f"<Response {self.status_code} {self.data[:500]!r}>"


class Transport(Protocol):
    """Carries one request; `json`, `data`, `content_type` and `query_string` as Flask's test client
    reads them."""

    def send(self, method: str, path: str, *, json: Any, data: bytes | str | None, headers: dict[str, str],
             content_type: str | None, query_string: Mapping[str, str] | None) -> Response: ...


@dataclass(frozen=True)
class WsgiTransport:
    """In process: the Flask app's test client (no socket, no server)."""

    client: FlaskClient

    def send(self, method: str, path: str, *, json: Any, data: bytes | str | None, headers: dict[str, str],
             content_type: str | None, query_string: Mapping[str, str] | None) -> Response:
        answer = self.client.open(path, method=method, json=json, data=data, headers=headers,
                                  content_type=content_type, query_string=query_string)
        return Response(answer.status_code, Headers(answer.headers), answer.get_data())


@dataclass(frozen=True)
class SocketTransport:
    """A real server on `host:port`, one HTTP/1.1 connection per request."""

    port: int
    host: str = LOOPBACK
    timeout: float = 60.0

    def send(self, method: str, path: str, *, json: Any, data: bytes | str | None, headers: dict[str, str],
             content_type: str | None, query_string: Mapping[str, str] | None) -> Response:
        if query_string:
            path += ("&" if "?" in path else "?") + urlencode(query_string)
        sent: dict[str, str] = {}
        if json is not None:
            data = jsonlib.dumps(json)
            content_type = content_type or "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        sent.update(headers)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=payload, headers=sent)
            return Response.of_http(connection.getresponse())
        finally:
            connection.close()


_DEFAULT: Any = object()  # `role=` not given: the client's own role


@dataclass(frozen=True)
class Client:
    """Requests with the bearer token of a role (default `admin`; None sends no token)."""

    transport: Transport
    tokens: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(API_TOKENS))
    role: str | None = "admin"

    @classmethod
    def wsgi(cls, flask_client: FlaskClient, role: str | None = "admin") -> Client:
        """A client of the app behind `flask_client`, with the test tokens of tests/helpers/app.py."""
        return cls(WsgiTransport(flask_client), dict(API_TOKENS), role)

    def as_role(self, role: str | None) -> Client:
        return dataclasses.replace(self, role=role)

    def call(self, method: str, path: str, *, role: str | None = _DEFAULT, json: Any = None,
             data: bytes | str | None = None, headers: Mapping[str, str] | None = None,
             content_type: str | None = None, query_string: Mapping[str, str] | None = None) -> Response:
        role = self.role if role is _DEFAULT else role
        sent = dict(headers or {})
        if role is not None:
            sent.setdefault("Authorization", f"Bearer {self.tokens[role]}")
        return self.transport.send(method, path, json=json, data=data, headers=sent,
                                   content_type=content_type, query_string=query_string)

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Response:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Response:
        return self.call("PUT", path, **kwargs)

    # shortcuts that assert the expected status and return the JSON body

    def ok(self, method: str, path: str, *, status: int = 200, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, f"{method} {path}: expected {status}, got {response!r}"
        return response.get_json()

    def create(self, workflow: str, context: Mapping[str, Any] | None = None,
               **fields: Any) -> dict[str, Any]:
        body = {"context": dict(context or {}), **fields}
        created: dict[str, Any] = self.ok("POST", f"/workflows/{workflow}/instances", status=201, json=body)
        return created

    def fire(self, instance: str, event: str, data: Mapping[str, Any] | None = None, *,
             status: int = 200, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.ok("POST", f"/instances/{instance}/events", status=status,
                                       json={"event": event, "data": dict(data or {})}, **kwargs)
        return body

    def instance(self, instance: str) -> dict[str, Any]:
        found: dict[str, Any] = self.ok("GET", f"/instances/{instance}")
        return found

    def history(self, instance: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.ok("GET", f"/instances/{instance}/history")["items"]
        return items

    def notifications(self, instance: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.ok("GET", f"/notifications?instance={instance}")["items"]
        return items

    def clock(self, now: datetime | str) -> str:
        """A new test clock at `now` (an aware instant, or its RFC 3339 text); returns its id."""
        at = now.isoformat() if isinstance(now, datetime) else now
        return str(self.ok("POST", "/clocks", status=201, json={"now": at})["id"])

    def signup(self, *, clock: str | None = None, email: str | None = None, password: str = "Secret#2025",
               country: str = "KR", member_type: str = "individual") -> str:
        """A signup driven to `payment_method_required` (the email code read from the outbox);
        returns its id."""
        account = str(self.create("signup", **({"clock": clock} if clock else {}))["id"])
        self.fire(account, "select_type", {"country": country, "member_type": member_type,
                                           "birth_date": "1990-01-01"})
        self.fire(account, "submit_email", {"email": email or f"{account}@example.com"})
        code = self.notifications(account)[-1]["payload"]["code"]
        self.fire(account, "verify_email", {"code": code})
        self.fire(account, "set_password", {"password": password, "password_confirm": password})
        return account

    def register_card(self, account: str, channel: str = "web") -> str:
        """A personal credit card registered for `account`; returns the payment_method id."""
        pm = str(self.create("payment_method", {"account": account, "channel": channel})["id"])
        self.fire(pm, "select_method", {"method": "credit_card", "card_type": "personal",
                                        "card_owner": "person"})
        self.fire(pm, "verify_phone", {"owner_match": True})
        self.fire(pm, "register", {"agree_payment_info": True, "agree_recurring": True})
        return pm
