#!/usr/bin/env bash
# The coding agents the end-to-end tests drive through the gateway, at pinned versions,
# installed from npm into var/agents (idempotent): Claude Code and Codex CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
CLAUDE_CODE=2.1.197
CODEX=0.171.0
PREFIX=var/agents
mkdir -p "$PREFIX"

have() { [ -f "$PREFIX/.versions" ] && grep -qx "$1" "$PREFIX/.versions"; }

if ! have "claude-code@$CLAUDE_CODE codex@$CODEX"; then
  if ! command -v npm >/dev/null; then
    echo "agents: npm is missing; the end-to-end tests with real agents need Node.js" >&2
    exit 1
  fi
  npm install --silent --global --prefix "$PREFIX" \
    "@anthropic-ai/claude-code@$CLAUDE_CODE" "@openai/codex@$CODEX" >/dev/null 2>&1
  # Claude Code links its platform binary in a postinstall step npm may not run.
  (cd "$PREFIX/lib/node_modules/@anthropic-ai/claude-code" && node install.cjs >/dev/null)
  echo "claude-code@$CLAUDE_CODE codex@$CODEX" >"$PREFIX/.versions"
fi
"$PREFIX/bin/claude" --version
"$PREFIX/bin/codex" --version
