"""A serving design measured and not chosen: gunicorn's asyncio (`asgi`) worker buffering whole
requests on its event loop, then running the Flask app on a pool of threads.

It holds against slow and idle clients like tollgate's buffered gthread worker (service/buffering.py),
but puts every request through a second HTTP stack (gunicorn's asyncio protocol) and a hop from
the event loop to a thread and back, where the buffered gthread worker keeps gunicorn's own
request path for the app; its one `tollgate bench --only http` run gave 0.24x throughput (goal
0.4x) on a loaded machine; see bench/NOTES.md, "Slow and idle clients". `python -m
bench.slow_clients --fronts asgi` still measures it: `install()` points `service.server` at it in
that child process.

- `Worker` is gunicorn's asyncio worker with `ProblemProtocol`: problem+json error answers and a
  `HEAD_TIMEOUT` for the request head.
- `BufferedWSGI` reads the body on the loop (at most the limit plus one byte) and hands the whole
  request to a thread; the app sees the body with its length and no Transfer-Encoding.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

from tollgate.service.application.problems import TYPE_BASE

#: Seconds a connection may take to send a whole request head (request line and headers); then it
#: is closed. nginx's `client_header_timeout` is 60 s; a real client sends its head at once.
HEAD_TIMEOUT = 30.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: gunicorn's statuses for requests it refuses before any application sees them.
_SLUGS = {400: "bad_request", 413: "payload_too_large", 414: "uri_too_long",
          431: "request_header_fields_too_large", 501: "not_implemented"}


class ProblemProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 protocol with problem+json error answers and a deadline for the head."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer = self.worker.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

    def _on_headers_complete(self) -> Any:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        return super()._on_headers_complete()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._current_request is None and not self._closed:
            self._close_transport()
            if self._request_ready is not None:
                self._request_ready.set()  # let the connection's task see it closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        title = {414: "URI Too Long", 431: "Request Header Fields Too Large"}.get(status)
        title = title or self._get_reason_phrase(status)
        detail = self._detail(status, message)
        body = json.dumps({"type": TYPE_BASE + _SLUGS.get(status, f"http_{status}"), "title": title,
                           "status": status, "detail": detail}, ensure_ascii=False).encode("utf-8")
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        self._safe_write(head.encode("latin-1") + body)

    def _detail(self, status: int, message: str) -> str:
        cfg = self.cfg
        if status == 414:
            return (f"The request line is longer than {cfg.limit_request_line} bytes; send a shorter "
                    "path and query.")
        if status == 431:
            return (f"The request has more than {cfg.limit_request_fields} header fields or one longer "
                    f"than {cfg.limit_request_field_size} bytes; send fewer or shorter headers.")
        return f"The server could not read this request ({message}); fix it and send it again."


class Worker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker, serving connections with `ProblemProtocol`."""

    def init_process(self) -> None:
        # gasgi builds each connection's protocol by this module-level name; this worker process
        # serves only tollgate, so the name is pointed at the subclass here.
        gasgi.ASGIProtocol = ProblemProtocol
        super().init_process()


class BufferedWSGI:
    """An ASGI app that buffers each whole request, then runs a WSGI app on a pool of threads."""

    def __init__(self, app: Any, *, threads: int, max_body: int) -> None:
        self.app = app  # the Flask app (its `extensions` hold the runtime for the scheduler)
        self.max_body = max_body
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:  # made in the worker process that serves, not before a fork
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tollgate-request")
        return self._pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not spoken here
            return
        body = await self._read_body(scope, receive)
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(self.pool(), _run, self.app, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or its first `max_body + 1` bytes; None when its Content-Length is
        already over the limit (the app refuses it by that header without reading a byte)."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body or not message.get("more_body", False):
                break
        return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _environ(scope: Scope, body: bytes | None) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of a buffered request: the body with its length."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    path = unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("latin-1")
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": path,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]), "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body or b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key == "TRANSFER_ENCODING":
            continue  # the body is de-chunked here
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    if body is not None:
        environ["CONTENT_LENGTH"] = str(len(body))  # over the limit when the client sent more
    return environ


def _run(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call the WSGI app on a pool thread; its status, headers and whole body."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    try:
        written.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return (int(status.split(" ", 1)[0]),
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers], b"".join(written))


def install() -> None:
    """Make `service.server.serve(..., front="asgi")` run this design (bench.slow_clients' child)."""
    from tollgate.service import server

    def load(self: Any) -> Any:
        from tollgate.service.app import create_app
        app = create_app()
        return BufferedWSGI(app, threads=8, max_body=app.config["MAX_CONTENT_LENGTH"])

    def start_scheduler(worker: Any) -> None:
        from tollgate.service.scheduler import Scheduler
        Scheduler(worker.asgi.app.extensions["tollgate"]).start()

    server.FRONTS["asgi"] = "bench.asgi_front.Worker"
    server.TollgateServer.load = load  # type: ignore[method-assign]
    server._start_scheduler = start_scheduler
