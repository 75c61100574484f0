"""API keys: high-entropy secrets, stored only as a SHA-256 hash plus a short display prefix.

Keys carry 256 bits of randomness, so a fast hash is as safe as a slow one here and keeps
authentication cheap. Lookups compare in constant time where a comparison happens in
Python (the master key); key lookups go by hash through a unique index.

A request's key is read from ``Authorization: Bearer <key>`` (the OpenAI SDKs) or
``x-api-key: <key>`` (the Anthropic SDKs). A credential sent any other way (another scheme,
a key without one, Azure's ``api-key`` header) is refused rather than ignored: served as
anonymous, the request would escape its team's attribution and budget. An empty header is
no credential.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from policies.errors import AuthenticationFailed

KEY_PREFIX = "tg-"
_ACCEPTED = "send the key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"


def generate_key() -> tuple[str, str, str]:
    """Return (full key, display prefix, hash). The full key is shown once and never stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:10], hash_key(raw)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"


def master_key_matches(presented: str | None, master: str | None) -> bool:
    if not presented or not master:
        return False
    return hmac.compare_digest(presented.encode(), master.encode())


def request_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, or None when it carries no credential at all (headers
    that are absent or empty: a client configured without a key sends ``Bearer`` alone).
    A credential the gateway cannot read (another scheme, a key without one, Azure's
    ``api-key``) is a 401, never an anonymous request."""
    auth = (headers.get("authorization") or "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = (headers.get("x-api-key") or "").strip()
    if key:
        return key
    # Never quote the header's value: a key sent without a scheme would be echoed back.
    if auth and scheme.lower() != "bearer":
        raise AuthenticationFailed(
            "unusable Authorization header (only the Bearer scheme with a key is read); "
            + _ACCEPTED
        )
    if (headers.get("api-key") or "").strip():
        raise AuthenticationFailed("the api-key header is not read here; " + _ACCEPTED)
    return None
