from pathlib import Path

import pytest

from tests.conftest import REQUIRE
from tests.e2e.conftest import monkeypatch_module, sims  # noqa: F401  (shared fixtures)

HELM = Path(__file__).resolve().parents[2] / "var" / "tools" / "helm"


@pytest.fixture(scope="module")
def helm() -> str:
    if not HELM.exists():
        msg = "helm is not installed: run scripts/deploy_tools.sh"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    return str(HELM)
