from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main


@pytest.fixture
def migrated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A fresh sqlite database at the newest migration, by the CLI; its URL."""
    url = f"sqlite:///{tmp_path}/tg.db"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    capsys.readouterr()
    return url
