"""Hand-written hostile input against a real API process (with API keys, so
the guard is in the way too): invalid UTF-8, huge and odd headers, bad
``Last-Event-ID`` values, chat ids with path tricks, malformed HTTP. Never a
5xx, every error a JSON body, never another chat's data, and the process
keeps serving."""

from __future__ import annotations

import socket
from urllib.parse import quote

import httpx
import pytest
from harness import create_chat, prompt_with_length, wait_chat_status

from api import auth

pytestmark = pytest.mark.e2e

KEY, OTHER = "tf-hostile-key-0123456789", "tf-hostile-other-0123456789"


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        env={
            "TOKENFAN_API_KEYS": f"{auth.hash_key(KEY)},{auth.hash_key(OTHER)}",
            "TOKENFAN_SECRET": "hostile-secret",
            "TOKENFAN_RATE_LIMIT_PER_S": "0",
            "TOKENFAN_SIM_TOKENS_PER_S": "2000",
        }
    )


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=httpx.Timeout(10.0), headers={"authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def chat(cluster, client):
    """A finished chat of KEY's, and one of OTHER's."""
    base = cluster.api.url
    mine = create_chat(client, base, prompt_with_length(20, 40, "hostile"), max_tokens=50)
    r = client.post(
        f"{base}/chat", json={"prompt": "theirs", "max_tokens": 5}, headers={"authorization": f"Bearer {OTHER}"}
    )
    theirs = r.json()["id"]
    wait_chat_status(client, base, mine, ["done"])
    return mine, theirs


def json_error(r: httpx.Response) -> dict:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.status_code >= 400, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.headers, r.text[:300])
    error = r.json()["error"]
    assert error["code"] and error["message"]
    return error


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; return what came back before the server closed (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def status_of(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw[9:12])


def test_invalid_utf8_and_odd_bodies(cluster, client):
    base = cluster.api.url
    ct = {"content-type": "application/json"}
    for path in ("/chat", "/v1/chat/completions"):
        for body in (
            b'{"prompt": "\xff\xfe\xfd"}',
            b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}',
            b"\xff" * 100,
            b'{"prompt": "hi"}' + b"\x00" * 10,
            b"[" * 50_000 + b"]" * 50_000,  # deep nesting
            b'{"prompt": "' + b"\\ud800" + b'"}',  # a lone surrogate
            b'{"prompt": 1e999999}',
            b"",
            b"null",
        ):
            json_error(client.post(base + path, content=body, headers=ct))
        json_error(client.post(base + path, content=b'{"prompt": "hi"}', headers={"content-type": "text/plain"}))
    assert cluster.api.alive()


def test_bad_last_event_ids(cluster, chat):
    mine, _ = chat
    bearer = f"Authorization: Bearer {KEY}".encode()
    for route in (f"/chat/{mine}/stream", f"/v1/chat/completions/{mine}/stream"):
        for bad in (
            b"-1",
            b"1e9",
            b"abc",
            b"9" * 10_000,
            b"1" * 19,
            b"0x10",
            "١".encode(),
            b"NaN",
            b"%31",
            b"\xff\xfe",
            b"1,2",
            b"+1",
        ):
            for via in ("header", "query"):
                if via == "header":
                    status, body = raw_get(cluster.api.port, route, [bearer, b"Last-Event-ID: " + bad])
                else:
                    status, body = raw_get(cluster.api.port, f"{route}?last_event_id={quote(bad)}", [bearer])
                assert status == 400 and b"invalid_last_event_id" in body, (route, via, bad[:20], status, body[:200])


def test_chat_ids_with_path_tricks(cluster, client, chat):
    mine, theirs = chat
    base = cluster.api.url
    tricks = [
        "..",
        "../healthz",
        "..%2F..%2Fhealthz",
        "%2e%2e%2f%2e%2e%2freadyz",
        f"{mine}%2F..%2F{theirs}",
        f"{mine}/../{theirs}",
        f"..%2f{theirs}",
        f"{theirs}%00",
        f"{mine}%00{theirs}",
        theirs.upper(),
        f" {theirs}",
        f"{theirs}%20",
        f"{theirs};x",
        "%ff%fe",
        "x" * 10_000,
        "%00",
        "*",
        "%252e%252e",
        f"{theirs}#",
    ]
    for trick in tricks:
        for method, path in (
            ("GET", f"/chat/{trick}"),
            ("DELETE", f"/chat/{trick}"),
            ("GET", f"/chat/{trick}/stream"),
            ("GET", f"/v1/chat/completions/{trick}/stream"),
        ):
            r = client.request(method, base + path)
            assert r.status_code < 500, (method, path, r.status_code)
            if r.status_code == 200:
                # Only a path that the client normalised to a route of ours
                # ("/chat/.." is "/", the page), never another key's chat.
                assert theirs not in r.text, (method, path, r.text[:200])
            else:
                json_error(r)
    # The other key's chat stays out of reach, and untouched.
    r = client.get(f"{base}/chat/{theirs}", headers={"authorization": f"Bearer {OTHER}"})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "running", "done")


def test_odd_authorization_and_tokens(cluster, chat):
    mine, _ = chat
    api = cluster.api
    for value in (
        b"Bearer",
        b"Bearer ",
        b"Bearer  " + KEY.encode() + b"  extra",
        b"bearer\t" + KEY.encode(),
        b"Bearer " + b"x" * 20_000,
        b"Bearer " + KEY.upper().encode(),
        b"Basic " + KEY.encode(),
        b"Bearer " + auth.hash_key(KEY).encode(),
        b"Bearer \xff\xfe",
        b"Bearer " + KEY.encode() + b"\x00",
    ):
        status, body = raw_get(api.port, f"/chat/{mine}", [b"Authorization: " + value])
        if b"\x00" in value:  # uvicorn itself refuses a NUL in a header (plain text), before the app
            assert status == 400, (value[:40], status, body[:200])
            continue
        assert status == 401 and b'"unauthorized"' in body, (value[:40], status, body[:200])
    with httpx.Client(timeout=10.0) as anon:
        for token in ("%ff", "1.2.3", "9" * 5000 + ".x", "", "..", "\x00", "1." + "A" * 43):
            error = json_error(anon.get(f"{api.url}/chat/{mine}/stream", params={"token": token}))
            assert error["code"] == "invalid_stream_token", token


def raw_get(port: int, path: str, headers: list[bytes]) -> tuple[int | None, bytes]:
    head = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    raw = raw_request(port, head + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
    return status_of(raw), raw.partition(b"\r\n\r\n")[2]


def test_huge_and_malformed_http(cluster, client):
    api = cluster.api
    host = b"Host: 127.0.0.1\r\n"
    auth_line = f"Authorization: Bearer {KEY}\r\n".encode()
    cases = {
        "100 KB header": b"GET /healthz HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        "1 MB header": b"GET /v1/models HTTP/1.1\r\n" + host + auth_line + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
        "20,000 headers": b"GET /v1/models HTTP/1.1\r\n"
        + host
        + auth_line
        + b"".join(b"X-%d: v\r\n" % i for i in range(20_000))
        + b"\r\n",
        "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200 + b"\r\n\r\n",
        "bad content-length": b"POST /chat HTTP/1.1\r\n" + host + auth_line + b"Content-Length: -5\r\n\r\n{}",
        "two content-lengths": b"POST /chat HTTP/1.1\r\n"
        + host
        + auth_line
        + b"Content-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
        "huge content-length": b"POST /chat HTTP/1.1\r\n"
        + host
        + auth_line
        + b"Content-Length: 99999999999999\r\n\r\n{}",
        "bad chunked": b"POST /chat HTTP/1.1\r\n"
        + host
        + auth_line
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "non-ascii path": b"GET /chat/\xff\xfe HTTP/1.1\r\n" + host + auth_line + b"\r\n",
        "junk in a name": b"GET /healthz HTTP/1.1\r\n" + host + b"X\x00Y: 1\r\n\r\n",
    }
    for name, data in cases.items():
        raw = raw_request(api.port, data)
        status = status_of(raw)
        # Refused (4xx) or the connection closed: never a 5xx.
        assert status is None or 400 <= status < 500, (name, raw[:200])
        if "header" in name:
            assert status == 431 and b"headers_too_large" in raw, (name, raw[:300])
        api.check_alive()
        assert client.get(f"{api.url}/healthz").status_code == 200, f"not serving after: {name}"
    assert "Exception in ASGI application" not in api.log_text()
