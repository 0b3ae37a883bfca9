"""Connection limits against a real server process and real sockets (issue 13, class 6).

One subprocess server with short limits: header timeout 1 s, body idle 1 s, body
total 3 s, 12 connections, an upload budget of 150 kB, a queue of one job.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Iterator

import httpx
import pytest

from server.limits import UploadBudget
from lift3d.errors import UploadsBusy
from tests.support.servers import free_port, small_png, fake_server_env, start_fake_server, stop_server, wait_for_http, wait_until

KEY = "conn-key"
HEADER_TIMEOUT = 1.0
BODY_IDLE = 1.0
BODY_TOTAL = 3.0
MAX_CONNECTIONS = 12
BUDGET = 150_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("connections")
    port = free_port()
    env = fake_server_env(
        KEY,
        tmp / "data",
        port,
        {
            "LIFT3D_QUEUE_SIZE": "1",
            "LIFT3D_SHUTDOWN_GRACE_SECONDS": "1",
            "LIFT3D_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "LIFT3D_KEEP_ALIVE_SECONDS": "1",
            "LIFT3D_BODY_IDLE_TIMEOUT_SECONDS": str(BODY_IDLE),
            "LIFT3D_BODY_TIMEOUT_SECONDS": str(BODY_TOTAL),
            "LIFT3D_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "LIFT3D_MAX_UPLOAD_BYTES_IN_FLIGHT": str(BUDGET),
        },
    )
    log_path = tmp / "server.log"
    process = start_fake_server(log_path, env, "--seconds-per-step", "0.2")
    try:
        wait_for_http(f"http://127.0.0.1:{port}", "/readyz", timeout=90, process=process)
        yield "127.0.0.1", port
    finally:
        stop_server(process)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.settimeout(10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``sock`` (reading and discarding), or fail after ``seconds``."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def response_of(sock: socket.socket, timeout: float) -> tuple[int, bytes, float]:
    """Status, the whole response (headers and body), and the seconds it took to arrive."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return int(data.split(b" ", 2)[1]), head + b"\r\n\r\n" + body, time.monotonic() - start


def upload_headers(length: int) -> bytes:
    return (
        f"POST /v1/jobs?steps=1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_silent_connection_is_closed_at_the_header_timeout(server: tuple[str, int]) -> None:
    sock = connect(server)
    assert closed_within(sock, HEADER_TIMEOUT + 3) >= HEADER_TIMEOUT * 0.8


def test_slowloris_headers_are_cut_off(server: tuple[str, int]) -> None:
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    start = time.monotonic()
    try:
        while time.monotonic() - start < HEADER_TIMEOUT + 4:
            sock.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s, never the blank line
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass
    else:
        pytest.fail("the server accepted header lines past the header timeout")
    assert time.monotonic() - start < HEADER_TIMEOUT + 3


def test_a_body_that_stops_is_408(server: tuple[str, int]) -> None:
    sock = connect(server)
    body = small_png()
    sock.sendall(upload_headers(len(body) + 5000) + body)  # the Content-Length lies
    status, data, elapsed = response_of(sock, BODY_IDLE + 5)
    assert status == 408 and b'"code":"request_timeout"' in data, data
    assert elapsed < BODY_IDLE + 3


def test_a_trickling_body_ends_at_the_total_timeout(server: tuple[str, int]) -> None:
    sock = connect(server)
    sock.sendall(upload_headers(100_000))
    start = time.monotonic()
    sock.settimeout(0.3)
    data = b""
    while time.monotonic() - start < BODY_TOTAL + 5 and not data:
        try:
            sock.sendall(b"x" * 10)  # under the idle gap, far under a sane rate
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert BODY_TOTAL * 0.8 < time.monotonic() - start < BODY_TOTAL + 3


def test_connections_over_the_cap_get_503_then_come_back(server: tuple[str, int]) -> None:
    idle = [connect(server) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    refused = httpx.get(f"http://{server[0]}:{server[1]}/healthz", timeout=5)
    assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "too_many_connections" and refused.headers["retry-after"] == "1"
    assert refused.json()["retry_after"] == 1  # the same members as every problem the app writes
    # The silent ones are closed at the header timeout, and the server answers again.
    wait_until(lambda: httpx.get(f"http://{server[0]}:{server[1]}/healthz", timeout=5).status_code == 200, 10)
    for sock in idle:
        sock.close()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: -1\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 99999999999999999999999999999\r\n",
    ],
)
def test_framing_h11_cannot_parse_is_a_problem_json_400(server: tuple[str, int], framing: bytes) -> None:
    sock = connect(server)
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n" + framing + b"\r\nhello")
    status, data, _ = response_of(sock, 5)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status == 400 and b"content-type: application/problem+json" in head.lower(), data
    problem = json.loads(body)
    assert problem["code"] == "bad_request" and problem["status"] == 400 and problem["type"].endswith("bad_request")
    sock.close()


def test_the_upload_budget_refuses_from_the_headers(server: tuple[str, int]) -> None:
    holder = connect(server)
    holder.sendall(upload_headers(100_000) + b"x" * 1000)  # reserves 100 kB, then waits
    time.sleep(0.3)
    second = connect(server)
    second.sendall(upload_headers(100_000))  # headers only: the answer must not need the body
    status, data, elapsed = response_of(second, 5)
    assert status == 429 and b'"code":"uploads_busy"' in data and b"retry-after" in data.lower(), data
    assert elapsed < BODY_IDLE  # not the body timeout: refused before any body byte
    assert response_of(holder, BODY_IDLE + 5)[0] == 408  # the holder times out and frees its reservation
    holder.close()
    second.close()


def test_a_full_queue_is_429_before_the_body(server: tuple[str, int]) -> None:
    base = f"http://{server[0]}:{server[1]}"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        running = client.post("/v1/jobs?steps=200", content=small_png()).json()["id"]
        wait_until(lambda: client.get(f"/v1/jobs/{running}").json()["status"] == "running", 20)
        queued = client.post("/v1/jobs?steps=200", content=small_png())
        assert queued.status_code == 202
        sock = connect(server)
        sock.sendall(upload_headers(1_000_000))  # a 1 MB upload announced, not one byte sent
        status, data, elapsed = response_of(sock, 5)
        assert status == 429 and b'"code":"queue_full"' in data and b"retry-after" in data.lower(), data
        assert elapsed < BODY_IDLE
        sock.close()
        for job_id in (running, queued.json()["id"]):
            client.delete(f"/v1/jobs/{job_id}")


def test_upload_budget_unit() -> None:
    budget = UploadBudget(100)
    first = budget.reserve(60)
    with pytest.raises(UploadsBusy):
        budget.reserve(60)
    second = budget.reserve(40)
    first.release()
    first.release()  # releasing twice frees once
    assert budget.reserved == 40
    second.release()
    with budget.reserve(500):  # one upload is always let through, even above the budget
        with pytest.raises(UploadsBusy):
            budget.reserve(1)
    assert budget.reserved == 0


def test_owner_routes_use_the_raw_path_over_a_real_socket(server: tuple[str, int]) -> None:
    """uvicorn hands the raw path to the app: an escaped '/' never routes to another owner."""
    base = f"http://{server[0]}:{server[1]}"
    headers = {"Authorization": f"Bearer {KEY}"}
    for raw, expected in ((b"/v1/owners/%2Fvictim", 422), (b"/v1/owners//victim", 404), (b"/v1/owners/victim%2F", 422)):
        sock = connect(server)
        sock.sendall(b"DELETE " + raw + f" HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        status, data, _ = response_of(sock, 5)
        sock.close()
        assert status == expected, (raw, data)
    assert httpx.get(f"{base}/v1/owners/victim/jobs", headers=headers, timeout=5).status_code == 200
