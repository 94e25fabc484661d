"""What `tollgate serve` does with slow, idle, oversized and malformed requests (a real server)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.helpers.client import LOOPBACK, Response
from tests.helpers.paths import ROOT, RULES_PATH
from tests.helpers.server import StartServer, TollgateServer

pytestmark = pytest.mark.e2e

SLOW, IDLE, PIPELINED = 50, 200, 20


@contextlib.contextmanager
def hostile_sockets(port: int) -> Iterator[None]:
    """SLOW sockets sending a request head one byte a second (never finished), IDLE sockets that
    send nothing, and PIPELINED sockets that send a whole request with the start of a second one
    behind it and then go on like the slow ones, open for the duration of the block."""
    slow = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(SLOW + PIPELINED)]
    idle = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(IDLE)]
    for sock in slow[SLOW:]:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n\r\nGET /healthz HTTP/1.1\r\n")
    stop = threading.Event()
    trickle = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 1000

    def send_bytes() -> None:
        for byte in trickle:
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
            if stop.wait(1.0):
                return

    sender = threading.Thread(target=send_bytes, name="slowloris", daemon=True)
    sender.start()
    try:
        stop.wait(2.0)  # every socket accepted and trickling
        yield
    finally:
        stop.set()
        sender.join(10)
        for sock in slow + idle:
            sock.close()


def test_slow_and_idle_clients_do_not_starve_other_clients(server: TollgateServer) -> None:
    client = server.client("admin", timeout=5.0)  # generous, per request
    answers: list[str] = []
    with hostile_sockets(server.port):
        for n in range(20):
            path = "/healthz" if n % 2 == 0 else "/instances?limit=5"
            try:
                answers.append(f"{path} {client.get(path).status_code}")
            except OSError as error:  # a timeout, refused or reset connection
                answers.append(f"{path} {type(error).__name__}")
    assert answers == [f"{'/healthz' if n % 2 == 0 else '/instances?limit=5'} 200" for n in range(20)]
    assert client.get("/healthz").status_code == 200  # and still after they have gone


def send_chunked(server: TollgateServer, path: str, body: bytes, content_type: str) -> Response:
    """PUT `body` with Transfer-Encoding: chunked (64 KiB chunks) and read the answer."""
    with socket.create_connection((LOOPBACK, server.port), timeout=60) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: tollgate\r\nAuthorization: Bearer "
                     f"{server.tokens['policy_editor']}\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered before the end
            for start in range(0, len(body), 65536):
                chunk = body[start:start + 65536]
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return Response.of_http(answer)


def assert_problem(response: Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response
    assert response.headers["content-type"] == "application/problem+json", response
    problem: dict[str, object] = response.get_json()
    assert problem["status"] == status
    return problem


def test_a_chunked_body_over_the_limit_is_refused_and_the_old_rules_stay_active(
        server: TollgateServer) -> None:
    editor = server.client("policy_editor")
    before = editor.ok("GET", "/rules")
    # valid rules followed by 2 MiB of comment: cut anywhere after the rules, it is still valid
    body = RULES_PATH.read_bytes() + b"\n" + (b"# padding" + b"." * 90 + b"\n") * 21_000
    response = send_chunked(server, "/rules", body, "application/yaml")
    problem = assert_problem(response, 413)
    assert "1048576 bytes" in str(problem["detail"])
    assert editor.ok("GET", "/rules")["version"] == before["version"]
    # the same rules under the limit, chunked, are taken whole
    taken = send_chunked(server, "/rules", RULES_PATH.read_bytes(), "application/yaml")
    assert taken.status_code == 200, taken
    assert taken.get_json()["sha256"] == before["sha256"]


def test_an_over_long_request_line_or_header_gets_problem_json(server: TollgateServer) -> None:
    client = server.client("admin")
    problem = assert_problem(client.get("/instances/" + "x" * 5000), 414)
    assert "4094 bytes" in str(problem["detail"])
    problem = assert_problem(client.get("/healthz", headers={"X-Long": "y" * 9000}), 431)
    assert "8190 bytes" in str(problem["detail"])
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        garbage = Response.of_http(answer)
    assert_problem(garbage, 400)


def test_the_configured_body_limit_is_honoured(start_server: StartServer) -> None:
    server = start_server("sqlite", extra_args=("--max-body-bytes", "10000"))
    editor = server.client("policy_editor")
    rules = RULES_PATH.read_text(encoding="utf-8")
    assert len(rules.encode()) > 10_000
    problem = assert_problem(editor.put("/rules", data=rules, content_type="application/yaml"), 413)
    assert "10000 bytes" in str(problem["detail"])
    assert_problem(send_chunked(server, "/rules", rules.encode(), "application/yaml"), 413)
    operator = server.client("operator")
    assert operator.post("/clocks", json={"now": "2026-10-15T10:00:00+09:00"}).status_code == 201


def test_serve_refuses_a_body_limit_that_is_not_a_positive_number() -> None:
    done = subprocess.run([sys.executable, "-m", "tollgate", "serve", "--max-body-bytes", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "TOLLGATE_MAX_BODY_BYTES must be a whole number of bytes, at least 1, not '0'" in done.stderr
