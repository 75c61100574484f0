"""Reading the catalog file the gateway is started with (``--config``, ``TIERGATE_CONFIG``)."""

from __future__ import annotations

from pathlib import Path

from policies.catalog import Catalog, load_catalog
from policies.errors import ConfigError

#: The example catalogs ship inside the package (an installed wheel has no gateway/examples
#: folder in the working directory).
EXAMPLES = Path(__file__).resolve().parent / "examples"


def read_catalog(path: str | Path) -> Catalog:
    """``load_catalog``; a missing file named like a shipped example says where those are."""
    try:
        return load_catalog(path)
    except ConfigError as exc:
        p = Path(path)
        shipped = EXAMPLES / p.name
        if not p.exists() and shipped.exists():
            raise ConfigError(
                f"{exc}; the example catalogs ship in the package: {shipped}"
            ) from None
        raise
