"""API keys, chat ownership and stream-token access.

Keys (``TOKENFAN_API_KEYS``): comma-separated entries, each

- ``sha256:<64 hex>`` or ``<label>=sha256:<64 hex>``: the SHA-256 of a key
  (what the configuration should hold: it then contains no secret). Make
  one with ``python -m api.auth new-key`` or ``python -m api.auth hash KEY``;
- anything else: a raw key, hashed here at start-up.

A presented key (``Authorization: Bearer <key>``) is hashed and compared with
every configured hash with ``hmac.compare_digest``, always all of them, so
the time taken says nothing about which key matched or how much of it.
Keys must be random (``new-key`` makes 256-bit ones): SHA-256 is right for
random tokens, not for passwords.

Ownership: a chat belongs to the key that created it. Its ``owner`` (stored in
the chat's metadata) is the key's label, or ``key-`` and the first 16 hex
digits of its hash: keys that share a label share their chats, which is how a
key is rotated. Any other key gets 404 for the chat, never 403.

The identity of the current request lives in a context variable set by the
guard middleware (api/middleware.py) and read by ``routes.submit_chat`` (the
owner of a new chat) and ``routes.load_meta`` (the ownership check). With no
key configured the service runs open: no identity, no check.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from api.errors import not_found

_HASHED = re.compile(r"(?:(?P<label>[A-Za-z0-9_.:-]{1,64})=)?sha256:(?P<hex>[0-9a-fA-F]{64})")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking. ``owner``: the key's owner id. ``chat_id``: set instead
    when a stream token grants access to that one chat."""

    owner: str | None = None
    chat_id: str | None = None


_identity: ContextVar[Identity | None] = ContextVar("tokenfan_identity", default=None)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, as (digest, owner) pairs."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._keys: list[tuple[bytes, str]] = []
        self.raw_entries = 0  # entries given as raw keys (worth a warning)
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            match = _HASHED.fullmatch(entry)
            if match:
                digest = bytes.fromhex(match["hex"])
                label = match["label"]
            else:
                digest = hashlib.sha256(entry.encode()).digest()
                label = None
                self.raw_entries += 1
            self._keys.append((digest, label or f"key-{digest.hex()[:16]}"))

    @classmethod
    def from_setting(cls, value: str) -> KeyRing:
        return cls(value.split(","))

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def owner_of(self, presented: str) -> str | None:
        """The owner of a presented key, or None. Compares with every key."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        owner = None
        for known, name in self._keys:
            if hmac.compare_digest(digest, known) and owner is None:
                owner = name
        return owner


def bearer_key(authorization: bytes | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header value, or None."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(b" ")
    key = key.strip()
    if scheme.lower() != b"bearer" or not key or len(key) > 512:
        return None
    try:
        return key.decode("ascii")
    except UnicodeDecodeError:
        return None


# --- the current request -------------------------------------------------------


@contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """The identity of the request being served, for ``current_owner`` and
    ``check_owner`` (set by the guard middleware around the app)."""
    token = _identity.set(identity)
    try:
        yield
    finally:
        _identity.reset(token)


def current_owner() -> str:
    """The owner to record for a chat created by this request ("" when open)."""
    identity = _identity.get()
    return (identity.owner or "") if identity else ""


def check_owner(chat_id: str, meta: dict[str, str]) -> None:
    """404 unless the current request may see this chat."""
    identity = _identity.get()
    if identity is None:
        return  # open service (or no guard in front: unit tests of the routes)
    if identity.chat_id is not None:
        if identity.chat_id != chat_id:
            raise not_found()
        return
    if meta.get("owner", "") != (identity.owner or ""):
        raise not_found()


# --- command line ----------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``python -m api.auth new-key [label]`` or ``python -m api.auth hash KEY [label]``."""
    if len(argv) >= 1 and argv[0] == "new-key":
        key = "tf-" + secrets.token_urlsafe(32)
        label = argv[1] if len(argv) > 1 else None
        print(f"key (give it to the client):        {key}")
        print(f"entry for TOKENFAN_API_KEYS:        {(label + '=') if label else ''}{hash_key(key)}")
        return 0
    if len(argv) >= 2 and argv[0] == "hash":
        label = argv[2] if len(argv) > 2 else None
        print(f"{(label + '=') if label else ''}{hash_key(argv[1])}")
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
