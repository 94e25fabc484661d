"""SMS and payment-gateway notifications as signed JSON webhooks (`WebhookSender`).

Each attempt is one `POST` of a JSON body to the channel's URL with
`Tollgate-Signature: t=…,v1=…` (service/delivery/signatures.py) and `Idempotency-Key: ntf_<id>`
(the same on every attempt). Any 2xx is delivered; any other status, a timeout or a broken
connection is a failed attempt, retried by the relay. The standard library's `http.client` is
enough here: one persistent HTTP/1.1 connection per sender and thread, reused while the receiver
keeps it open (no new TCP/TLS handshake per notification), with a timeout on connect and read.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

from tollgate.service.delivery.channels import Delivery, SendResult
from tollgate.service.delivery.signatures import HEADER, sign

USER_AGENT = "tollgate-webhooks/1"
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          http.client.CannotSendRequest)


def body_of(delivery: Delivery) -> bytes:
    """The JSON body of a webhook (UTF-8; keys in a fixed order)."""
    return orjson.dumps({
        "id": delivery.stable_id, "template": delivery.template, "channel": delivery.channel,
        "recipient": delivery.recipient, "payload": dict(delivery.payload), "instance": delivery.instance,
        "workflow": delivery.workflow, "created_at": delivery.created_at.isoformat(),
        "attempt": delivery.attempt})


class WebhookSender:
    """Posts the notifications of one channel to `url`, signed with `secret`."""

    def __init__(self, channel: str, url: str, secret: str, *, timeout: float = 10.0, name: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"The {name or channel} webhook URL must be http:// or https:// with a host.")
        if not secret:
            raise ValueError(f"The {name or channel} webhook needs a secret (TOLLGATE_WEBHOOK_SECRET) "
                             "to sign with.")
        self.channel = channel
        self.name = name or f"{channel} webhook"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._secret = secret
        self.timeout = timeout
        self._clock = clock
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()  # every thread's, for close()
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
            self._local.used = False
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            with self._lock:
                self._open.discard(conn)
        self._local.conn = None

    def send(self, delivery: Delivery) -> SendResult:
        body = body_of(delivery)
        headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.stable_id,
                   HEADER: sign(self._secret, body, int(self._clock())), "User-Agent": USER_AGENT}
        for fresh_try in (False, True):
            conn = self._connection()
            reused = bool(getattr(self._local, "used", False))
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()  # drain, so the connection can carry the next request
            except _STALE as error:
                self._drop()
                if reused and not fresh_try:  # the receiver closed an idle kept-alive connection
                    continue
                return SendResult(False, None,
                                  f"The {self.name} closed the connection ({type(error).__name__}).")
            except TimeoutError:
                self._drop()
                return SendResult(False, None, f"No answer from the {self.name} within {self.timeout:g} s.")
            except OSError as error:
                self._drop()
                return SendResult(False, None, f"The {self.name} could not be reached ({type(error).__name__}"
                                               f"{': ' + error.strerror if error.strerror else ''}).")
            self._local.used = True
            if response.will_close:
                self._drop()
            status = response.status
            if 200 <= status < 300:
                return SendResult(True, str(status), f"The {self.name} answered {status}.")
            return SendResult(False, str(status), f"The {self.name} answered {status} {response.reason}.")
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connections of every thread (the relay stops)."""
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()
        self._local.conn = None
