"""A 256-dimension static text embedding of the task text, loaded offline from a wheel.

The vectors are WordLlama's ``l2_supercat`` token embeddings (MIT), shipped inside the
``wordllama`` wheel with their tokenizer config. WordLlama's own loader looks for the
tokenizer under ``wordllama/tokenizer/`` while the wheel ships it under
``wordllama/tokenizers/``, and then tries a download; so the files are located here
directly (``importlib.util.find_spec``, which does not import the package) and read with
``tokenizers`` and a plain safetensors header parse. Nothing is ever downloaded.

An embedding is the mean of the token vectors of at most ``MAX_EMBED_CHARS`` characters
(the end of the text), normalised to unit length: a bounded cost whatever the prompt.
Loading happens once, on first use (about 0.3 s); requests that name a model never use it.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

DIM = 256
MAX_EMBED_CHARS = 1000
_WEIGHTS = Path("weights") / "l2_supercat_256.safetensors"
_TOKENIZER = Path("tokenizers") / "l2_supercat_tokenizer_config.json"
_TENSOR = "embedding.weight"
_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": None}


class EmbeddingUnavailable(RuntimeError):
    """The wheel that carries the vectors is not installed (or not complete)."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingUnavailable("the 'wordllama' wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def read_safetensor(path: Path, key: str) -> np.ndarray:
    """One tensor of a safetensors file: an 8-byte header size, a JSON header, raw data."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    meta = header[key]
    dtype = _DTYPES.get(meta["dtype"])
    if dtype is None:
        raise EmbeddingUnavailable(f"unsupported tensor dtype {meta['dtype']!r}")
    start, end = meta["data_offsets"]
    flat = np.frombuffer(data[8 + size + start : 8 + size + end], dtype=dtype)
    return flat.reshape(meta["shape"])


class StaticEmbedder:
    def __init__(self, vectors: np.ndarray, tokenizer: object) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # encode_batch_fast skips the character offsets, which are not used: same ids,
        # about a third less time on a 2,000-character text (bench/router/bench_router.py)
        fast = getattr(tokenizer, "encode_batch_fast", None)
        self._encode = (
            (lambda text, **kw: fast([text], **kw)[0]) if fast is not None else tokenizer.encode  # type: ignore[attr-defined]
        )
        self._top = self.vectors.shape[0] - 1

    @staticmethod
    def load(directory: Path | None = None) -> StaticEmbedder:
        from tokenizers import Tokenizer

        base = directory or _package_dir()
        weights, tok = base / _WEIGHTS, base / _TOKENIZER
        if not weights.exists() or not tok.exists():
            raise EmbeddingUnavailable(f"embedding files missing under {base}")
        vectors = read_safetensor(weights, _TENSOR)
        if vectors.ndim != 2 or vectors.shape[1] != DIM:
            raise EmbeddingUnavailable(f"expected {DIM}-dimension vectors, got {vectors.shape}")
        tokenizer = Tokenizer.from_file(str(tok))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return StaticEmbedder(vectors, tokenizer)

    def ids(self, text: str) -> list[int]:
        ids: list[int] = self._encode(text[-MAX_EMBED_CHARS:], add_special_tokens=False).ids
        return ids

    def embed(self, text: str) -> np.ndarray:
        """Unit-length mean token vector of the text's end; zeros for empty text."""
        ids = self.ids(text)
        if not ids:
            return np.zeros(DIM, dtype=np.float32)
        v = self.vectors[np.minimum(np.asarray(ids, dtype=np.int64), self._top)].sum(axis=0)
        n = float(np.sqrt(v @ v))
        return np.asarray(v / n if n > 0 else v, dtype=np.float32)

    def embed_many(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.embed(t) for t in texts]) if texts else np.zeros((0, DIM))


@lru_cache(maxsize=1)
def default_embedder() -> StaticEmbedder:
    return StaticEmbedder.load()
