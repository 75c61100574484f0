#!/usr/bin/env bash
# Highest request rate per contender: wrk, 8 connections, 10 s, after a 3 s warm-up.
# The gateway (and LiteLLM) pinned to core 0, simulator and wrk to core 1.
#   bash bench/overhead/throughput.sh            # tiergate vs direct
#   LITELLM=1 bash bench/overhead/throughput.sh  # plus LiteLLM's proxy (var/litellm-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
port() { $PY -c "from engines.asgi_thread import free_port; print(free_port())"; }
SIM=$(port); GW=$(port); LL=$(port)
tmp=$(mktemp -d)
$PY - "$SIM" "$tmp" <<'PYEOF'
import sys, yaml
d = yaml.safe_load(open("gateway/examples/demo.yaml"))
d["backends"]["flash-local"]["replicas"] = [f"http://127.0.0.1:{sys.argv[1]}"]
open(sys.argv[2] + "/catalog.yaml", "w").write(yaml.safe_dump(d))
PYEOF
export DEEPSEEK_API_KEY=sim TIERGATE_DATABASE_URL=none TIERGATE_LOG_LEVEL=warning
taskset -c 1 $PY -m gateway.cli sim --preset flash --zero-latency --port "$SIM" >/dev/null 2>&1 &
pids=($!)
taskset -c 0 $PY -m gateway.cli serve --config "$tmp/catalog.yaml" --port "$GW" >/dev/null 2>&1 &
pids+=($!)
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
if [ "${LITELLM:-}" = 1 ]; then
  cat > "$tmp/ll.yaml" <<YAML
model_list:
  - model_name: deepseek-chat
    litellm_params: {model: openai/deepseek-ai/DeepSeek-V4-Flash, api_base: "http://127.0.0.1:$SIM/v1", api_key: sim}
litellm_settings: {callbacks: [], num_retries: 0}
general_settings: {master_key: sk-bench-7f3a9c2e5b1d4f6a8c0e2b4d6f8a1c3e}
YAML
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR taskset -c 0 var/litellm-venv/bin/litellm \
    --config "$tmp/ll.yaml" --host 127.0.0.1 --port "$LL" --num_workers 1 >/dev/null 2>&1 &
  pids+=($!)
fi
wait_up() { for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }
wait_up "http://127.0.0.1:$SIM/health"; wait_up "http://127.0.0.1:$GW/healthz"
run() {  # name url key
  BENCH_KEY="$3" taskset -c 1 wrk -t1 -c8 -d3s -s bench/overhead/post.lua "$2" >/dev/null
  BENCH_KEY="$3" taskset -c 1 wrk -t1 -c8 -d10s --latency -s bench/overhead/post.lua "$2" \
    | awk -v n="$1" '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} /Non-2xx/ {err=$NF}
                     END {printf "%-10s %10s req/s   p50 %8s   p99 %8s   non-2xx %s\n", n, rps, p50, p99, err+0}'
}
sed 's/"deepseek-chat"/"deepseek-ai\/DeepSeek-V4-Flash", "chat_template_kwargs": {"thinking": false}/' \
  bench/overhead/post.lua > "$tmp/direct.lua"
BENCH_KEY= taskset -c 1 wrk -t1 -c8 -d10s --latency -s "$tmp/direct.lua" "http://127.0.0.1:$SIM/v1/chat/completions" \
  | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} END {printf "%-10s %10s req/s   p50 %8s   p99 %8s\n", "direct", rps, p50, p99}'
run tiergate "http://127.0.0.1:$GW/v1/chat/completions" ""
if [ "${LITELLM:-}" = 1 ]; then
  wait_up "http://127.0.0.1:$LL/health/liveliness"
  run litellm "http://127.0.0.1:$LL/v1/chat/completions" sk-bench-7f3a9c2e5b1d4f6a8c0e2b4d6f8a1c3e
fi
