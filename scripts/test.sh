#!/usr/bin/env bash
# Runs the whole test suite. Makes sure the services the tests talk to are up first:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (installed from Debian's
# packages and started here when the machine lacks them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/deploy_tools.sh >/dev/null
bash scripts/agents.sh >/dev/null
export TIERGATE_TEST_REDIS_URL="${TIERGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export TIERGATE_TEST_DATABASE_URL="${TIERGATE_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
# In CI every service-backed test must run: a missing service is a failure, not a skip.
if [ "${CI:-}" = "true" ]; then export TIERGATE_TEST_REQUIRE_SERVICES=1; fi
exec .venv/bin/python -m pytest -m "not gpu" -q "$@"
