from tests.e2e.conftest import monkeypatch_module, sims  # noqa: F401  (shared fixtures)
