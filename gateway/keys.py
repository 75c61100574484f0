"""API keys: high-entropy secrets, stored only as a SHA-256 hash plus a short display prefix.

Keys carry 256 bits of randomness, so a fast hash is as safe as a slow one here and keeps
authentication cheap. Lookups compare in constant time where a comparison happens in
Python (the master key); key lookups go by hash through a unique index.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "tg-"


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
