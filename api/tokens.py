"""Stream tokens: an HMAC-signed, expiring grant to read one chat's stream,
for browsers' EventSource (``?token=``), which cannot send headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def sign(secret: bytes, chat_id: str, ttl_s: int, now: float | None = None) -> str:
    expires = int((now or time.time()) + ttl_s)
    return f"{expires}.{_mac(secret, chat_id, expires)}"


def verify(secret: bytes, chat_id: str, token: str, now: float | None = None) -> bool:
    expires_text, _, mac = token.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 12:
        return False
    if not mac or not mac.isascii():  # compare_digest takes ASCII str only
        return False
    expires = int(expires_text)
    if expires < (now or time.time()):
        return False
    return hmac.compare_digest(mac, _mac(secret, chat_id, expires))


def _mac(secret: bytes, chat_id: str, expires: int) -> str:
    digest = hmac.new(secret, f"{chat_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
