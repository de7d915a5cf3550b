"""`fiat-onramp serve` as a real process on 127.0.0.1: bounded request heads, and forwarded
addresses believed only from the proxies FORWARDED_ALLOW_IPS names."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.config import Settings
from app.serving import HeaderLimitedHttpToolsProtocol, uvicorn_options

WEBHOOK_SOURCE = "203.0.113.7"  # TEST-NET-3: only ever written into a header here


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    def __init__(self, database_url: str, cwd: Path, extra: dict[str, str]) -> None:
        self.port = _free_port()
        names = {name.upper() for name in Settings.model_fields}
        env = {k: v for k, v in os.environ.items() if k not in names}
        env.update(
            DATABASE_URL=database_url,
            WORKERS_ENABLED="false",
            BAKKT_BASE_URL="http://127.0.0.1:1",
            WEBHOOK_ALLOWED_IPS=WEBHOOK_SOURCE,
            **extra,
        )
        self.log = cwd / f"serve-{self.port}.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=env,
            cwd=cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url("/healthz"), timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # polling a condition, not a synchronisation by time
        raise AssertionError(f"serve did not answer within {within}s:\n{self.log.read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()

    def raw(self, request: bytes, *, half_close: bool = True) -> tuple[int, bytes]:
        """Send bytes as they are, and read the whole answer (the server closes the connection
        after a `Connection: close` request or a refusal)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            sock.sendall(request)
            if half_close:
                # uvicorn stops at end of input before answering pipelined requests: only
                # for single requests.
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks)
        status_line = answer.split(b"\r\n", 1)[0]
        return int(status_line.split()[1]), answer


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(database_url, tmp_path_factory.mktemp("serve"), {})
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def behind_local_proxy(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    svc = Service(
        database_url, tmp_path_factory.mktemp("serve"), {"FORWARDED_ALLOW_IPS": "127.0.0.1"}
    )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def _get(headers: list[tuple[str, str]]) -> bytes:
    lines = [b"GET /healthz HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_a_100_kb_header_gets_431(service: Service) -> None:
    status, answer = service.raw(_get([("X-Big", "a" * 100 * 1024)]))
    assert status == 431
    assert b"connection: close" in answer.lower()


def test_a_64_mb_header_gets_431_without_being_read_whole(service: Service) -> None:
    # Sent in pieces while the answer is read: the server stops buffering at the limit.
    with socket.create_connection(("127.0.0.1", service.port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        answer = b""
        sock.setblocking(True)
        try:
            while sent < 64 * 1024 * 1024 and not answer:
                sock.sendall(b"a" * 65536)
                sent += 65536
                sock.settimeout(0.0)
                try:
                    answer = sock.recv(65536)
                except BlockingIOError:
                    pass
                finally:
                    sock.settimeout(15)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not answer:
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 ")
    # Refused long before the 64 MB were sent (at most the limit plus the linger budget).
    assert sent < 4 * 1024 * 1024


def test_500_headers_get_431(service: Service) -> None:
    status, _ = service.raw(_get([(f"X-H-{i}", "v") for i in range(500)]))
    assert status == 431


def test_a_request_within_the_limits_is_served(service: Service) -> None:
    headers = [(f"X-H-{i}", "v" * 200) for i in range(90)]
    status, answer = service.raw(_get(headers))
    assert status == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"status": "ok"}


def test_a_large_body_sent_with_its_head_is_not_taken_for_a_large_head(service: Service) -> None:
    body = b"x" * (60 * 1024)
    head = (
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    status, _ = service.raw(head + body)
    assert status == 405  # the route's own answer: the head was within its limit


def test_the_connection_serves_the_next_request_after_one_at_the_limit(service: Service) -> None:
    first = _get([("X-Pad", "p" * (30 * 1024))]).replace(b"Connection: close\r\n", b"")
    status, answer = service.raw(first + _get([]), half_close=False)
    assert status == 200
    assert answer.count(b"HTTP/1.1 200 OK") == 2


def _webhook_code(svc: Service, forwarded_for: str) -> str:
    response = httpx.post(
        svc.url("/webhooks/bakkt"),
        content=b"{}",
        headers={"content-type": "application/json", "X-Forwarded-For": forwarded_for},
        timeout=10,
    )
    assert 400 <= response.status_code < 500
    code: str = response.json()["code"]
    return code


def test_x_forwarded_for_from_a_local_client_cannot_pass_the_webhook_allow_list(
    service: Service,
) -> None:
    assert _webhook_code(service, WEBHOOK_SOURCE) == "webhook_source_not_allowed"


def test_x_forwarded_for_is_believed_from_a_proxy_in_forwarded_allow_ips(
    behind_local_proxy: Service,
) -> None:
    # The allow-list passes; the request then fails on its missing signature.
    assert _webhook_code(behind_local_proxy, WEBHOOK_SOURCE) != "webhook_source_not_allowed"
    assert _webhook_code(behind_local_proxy, "198.51.100.9") == "webhook_source_not_allowed"


def test_server_options_survive_the_pickling_into_worker_processes() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, max_request_header_bytes=4096, max_request_headers=20
    )
    protocol = pickle.loads(pickle.dumps(uvicorn_options(settings)["http"]))  # noqa: S301
    assert protocol.func is HeaderLimitedHttpToolsProtocol
    assert protocol.keywords == {"max_head_bytes": 4096, "max_headers": 20}


def test_idle_keep_alive_connections_outlive_a_load_balancers_idle_timeout(
    settings: Settings,
) -> None:
    """uvicorn closes an idle keep-alive connection after 5 s by default: a client or an ALB (60 s
    idle) that reuses it at that moment gets a reset, not an answer (a fault-suite client saw a
    ReadError 2 ms into a request). The service keeps them 75 s unless told otherwise."""
    config = uvicorn.Config("app.main:create_app", **uvicorn_options(settings))
    assert config.timeout_keep_alive == 75
    shorter = settings.model_copy(update={"http_keep_alive_timeout": 30.0})
    assert uvicorn.Config("x:y", **uvicorn_options(shorter)).timeout_keep_alive == 30
