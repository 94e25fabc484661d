"""The gunicorn worker of `tollgate serve`: gthread, with each request read whole before a thread runs it.

gunicorn's docs ("Design", "Deploying") say its sync and threaded workers need a buffering proxy
in front: a gthread worker hands each new connection to a thread that blocks reading the request,
so 8 slowloris sockets or a few hundred idle ones took every thread and `/healthz` failed for
everyone (bench/NOTES.md, "Slow and idle clients"). `Worker` does that buffering in the worker's
own poller thread, as nginx would in front of it:

- a new or kept-alive connection is watched by the poller; what it sends is read without
  blocking into a buffer until the request head is complete and then its body (framed by
  Content-Length or chunked), up to the body limit plus one byte. Only then does a thread take the
  connection, with the buffered bytes in front of the socket for gunicorn's own parser, which
  reads and checks the request exactly as before. A slow or idle client costs a socket, never a
  thread;
- a connection that has not sent a whole request within `REQUEST_TIMEOUT` seconds is closed
  (idle kept-alive ones after gunicorn's `keepalive`, as before);
- gunicorn's own answers to requests it cannot read (414, 431, 400, 501) are problem+json.

Requests from ordinary clients take the same path as in gunicorn's gthread worker, plus one
non-blocking read in the poller: `tollgate bench --only http` measures the same (bench/NOTES.md).
"""

from __future__ import annotations

import contextlib
import errno
import html
import json
import re
import selectors
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from tollgate.service.application.problems import TYPE_BASE

#: Seconds a client may take to send a whole request (head and body) once it has connected or
#: started a request on a kept-alive connection. nginx's client_header_timeout is 60 s.
REQUEST_TIMEOUT = 30.0

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)")
_SLUGS = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
          431: "request_header_fields_too_large", 500: "error", 501: "not_implemented"}
_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) ([^\r\n]*)\r\n")
_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.S)


def request_complete(data: bytes | bytearray, *, max_head: int, max_body: int) -> bool:
    """True when `data` holds a whole request (or as much of it as is worth buffering: a head over
    `max_head` or a body over `max_body`, which gunicorn's parser or the app then refuses).

    Only decides how long to buffer: the bytes go to gunicorn's parser unchanged, so a request this
    misjudges is read the rest of the way by the thread, and refused there if malformed."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > max_head
    head = bytes(data[:end]).lower()
    body = len(data) - end - 4
    if b"\r\ntransfer-encoding" in head:
        return body > max_body or _chunked_complete(data, end + 4)
    length = _CONTENT_LENGTH.search(head)
    return length is None or body >= min(int(length.group(1)), max_body + 1)


def _chunked_complete(data: bytes | bytearray, pos: int) -> bool:
    """True when a chunked body starting at `pos` has its last chunk and trailer section."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return False
        try:
            size = int(bytes(data[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            return True  # malformed: gunicorn's parser answers it
        if size == 0:
            return data.find(b"\r\n\r\n", eol) >= 0 or data[eol:eol + 4] == b"\r\n\r\n"
        pos = eol + 2 + size + 2
        if pos > len(data):
            return False


class Worker(ThreadWorker):
    """gunicorn's gthread worker whose poller buffers each whole request before a thread takes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: connections whose request is being read, oldest first, and when they must be done
        self.reading: OrderedDict[TConn, float] = OrderedDict()
        cfg = self.cfg
        self.max_head = cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
        self.max_body = 1024 * 1024  # set by load_wsgi from the app's limit

    def load_wsgi(self) -> None:
        super().load_wsgi()
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH")
        if limit:
            self.max_body = int(limit)

    # ── reading requests in the poller ──

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._read(TConn(self.cfg, client, address, listener.getsockname()))  # TConn: non-blocking

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection sends its next request: buffer it like a new one."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn)

    def _read(self, conn: TConn) -> None:
        conn.buffered = bytearray()
        self.reading[conn] = time.monotonic() + REQUEST_TIMEOUT
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, client: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data and not conn.buffered:  # the client closed or reset the connection
            self._stop_reading(conn)
            self.nr_conns -= 1
            conn.close()
            return
        self._add(conn, data)

    def _add(self, conn: TConn, data: bytes) -> None:
        conn.buffered += data
        # at the end of what the client sends, gunicorn's parser answers whatever it is
        if not data or request_complete(conn.buffered, max_head=self.max_head, max_body=self.max_body):
            self._stop_reading(conn)
            conn.data_ready = True
            conn.complete = True
            self.enqueue_req(conn)

    def enqueue_req(self, conn: TConn) -> None:
        if getattr(conn, "complete", False):
            conn.complete = False
            super().enqueue_req(conn)
            return
        # gthread's finish_request gives back a connection whose thread read past its request (a
        # pipelined next one, maybe partial): those bytes are buffered like any others
        pending = conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        self._read(conn)
        self._add(conn, pending)

    def _stop_reading(self, conn: TConn) -> None:
        self.reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def murder_pending(self) -> None:
        """Close connections that did not send a whole request in time (all of them on stop)."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading:
            conn, deadline = next(iter(self.reading.items()))
            if deadline > now and self.alive:
                break
            self._stop_reading(conn)
            self.nr_conns -= 1
            conn.close()

    def handle(self, conn: TConn) -> Any:
        """In a thread: the buffered bytes go in front of the socket, then gthread's own handling."""
        buffered = getattr(conn, "buffered", None)
        if buffered:
            conn.buffered = None
            conn.sock.setblocking(True)
            conn.init()  # the HTTP/1 parser (no TLS here); a no-op on a kept-alive connection
            conn.parser.unreader.unread(bytes(buffered))
        return super().handle(conn)

    # ── gunicorn's own error answers, as problem+json ──

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        """gunicorn classifies and logs the error and writes an HTML page into a buffer; the
        client gets the same status as problem+json."""
        page = _Captured()
        super().handle_error(req, page, addr, exc)
        status = _STATUS.match(page.data)
        code = int(status.group(1)) if status else 500
        title = status.group(2).decode("latin-1") if status else "Internal Server Error"
        message = _MESSAGE.search(page.data)
        detail = _detail(code, self.cfg, _unescape(message.group(1)) if message else "")
        body = json.dumps({"type": TYPE_BASE + _SLUGS.get(code, f"http_{code}"), "title": title,
                           "status": code, "detail": detail}, ensure_ascii=False).encode("utf-8")
        head = (f"HTTP/1.1 {code} {title}\r\nConnection: close\r\nContent-Type: application/problem+json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            util.write_nonblock(client, head + body)
        except Exception:
            self.log.debug("Failed to send error message.")


class _Captured:
    """A stand-in socket that keeps what gunicorn's `write_error` sends."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data


def _unescape(text: bytes) -> str:
    return html.unescape(text.decode("latin-1"))


def _detail(status: int, cfg: Any, message: str) -> str:
    if status == 414:
        return (f"The request line is longer than {cfg.limit_request_line} bytes; send a shorter path "
                "and query.")
    if status == 431:
        return (f"The request has more than {cfg.limit_request_fields} header fields or one longer than "
                f"{cfg.limit_request_field_size} bytes; send fewer or shorter headers.")
    if status == 500:
        return "The server failed to answer this request; the error is logged. Try again later."
    message = message.rstrip(".")
    return f"The server could not read this request ({message}); fix it and send it again."
