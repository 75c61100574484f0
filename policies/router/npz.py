"""Reading the router's ``.npz`` files: plain arrays only, never pickled objects."""

from __future__ import annotations

import io
import zipfile

import numpy as np


def read_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, loaded with ``allow_pickle=False``.

    Raises ``ValueError`` saying what is wrong: not a zip archive (another format, or a
    truncated file), a member that is not an array, or an array of Python objects.
    """
    buf = io.BytesIO(data)
    if not zipfile.is_zipfile(buf):
        raise ValueError("not an .npz archive (another format, or a truncated file)")
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(buf, allow_pickle=False) as z:
            for name in z.files:
                try:
                    value = z[name]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise ValueError(f"array {name!r} holds Python objects") from exc
                    raise ValueError(f"array {name!r}: {exc}") from exc
                if not isinstance(value, np.ndarray):
                    raise ValueError(f"member {name!r} is not a .npy array")
                out[name] = value
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"damaged .npz archive ({exc})") from exc
    return out


def require(arrays: dict[str, np.ndarray], *names: str) -> None:
    """``ValueError`` naming the arrays of ``names`` that ``arrays`` lacks."""
    missing = [n for n in names if n not in arrays]
    if missing:
        have = ", ".join(sorted(arrays)) or "none"
        raise ValueError(f"missing array(s) {', '.join(missing)} (it has: {have})")


def meta_dict(meta: np.ndarray) -> dict[str, str]:
    """The ``key=value`` strings of a ``meta`` array as a dict."""
    out: dict[str, str] = {}
    for m in meta.reshape(-1):
        key, sep, value = str(m).partition("=")
        if not sep:
            raise ValueError(f"'meta' entry {str(m)[:40]!r} is not key=value")
        out[key] = value
    return out
