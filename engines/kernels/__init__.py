"""DeepSeek V4 attention kernels (CSA/HCA) in Triton, with a PyTorch reference.

Importing this package loads neither torch nor triton: the kernel entry points below are
resolved on first use, so pure-Python callers (launch profiles, the CLI, the vLLM plugin's
entry point) stay light.

* ``reference``: the specification in plain PyTorch; ``reference_layer``: a whole layer.
* ``compress_decode``: decode-time compressor update (CSA 4:1 overlapping, HCA 128:1).
* ``index_scores``, ``select_topk``, ``index_topk``: lightning indexer and top-k.
* ``sparse_decode``: split-K sparse decode attention with the per-head sink.
* ``PagedEntries``, ``EntryFormat``: paged bf16 / FP8 caches.
"""

from __future__ import annotations

import importlib
from typing import Any

from engines.kernels.shapes import FLASH, PRO, AttentionShape, LayerKind, RopeConfig

_LAZY = {
    "compress_decode": "engines.kernels.compressor",
    "new_state": "engines.kernels.compressor",
    "index_scores": "engines.kernels.indexer",
    "select_topk": "engines.kernels.indexer",
    "index_topk": "engines.kernels.indexer",
    "sparse_decode": "engines.kernels.decode",
    "PagedEntries": "engines.kernels.paged",
    "EntryFormat": "engines.kernels.fp8",
    "KV_FORMAT": "engines.kernels.fp8",
    "INDEX_FORMAT": "engines.kernels.fp8",
}

__all__ = ["FLASH", "PRO", "AttentionShape", "LayerKind", "RopeConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
