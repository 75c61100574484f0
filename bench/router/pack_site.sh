#!/usr/bin/env bash
# Packs what bench/router/bench_router.py needs to run on another machine that has a
# Python 3.12 with numpy but no network (the GPU machine): the router's third-party
# packages as importable folders (var/devsite) and the public routing data (var/devdata).
#
#   bash bench/router/pack_site.sh
#   # there: PYTHONPATH=var/devsite TIERGATE_ROUTING_DATA=var/devdata \
#   #        taskset -c 2 python bench/router/bench_router.py
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf var/devsite var/devdata && mkdir -p var/devsite/wordllama/weights var/devsite/wordllama/tokenizers
touch var/devsite/wordllama/__init__.py # the embedding reads the wheel's files, not its code
cp "$SP"/wordllama/weights/l2_supercat_256.safetensors var/devsite/wordllama/weights/
cp "$SP"/wordllama/tokenizers/l2_supercat_tokenizer_config.json var/devsite/wordllama/tokenizers/
cp -r "$SP"/pydantic "$SP"/typing_inspection "$SP"/annotated_types "$SP"/typing_extensions.py var/devsite/
cp -r "$SP"/tokenizers var/devsite/ # abi3: the same build loads on 3.12
WH=$(mktemp -d)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WH" \
  "pydantic-core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  "pyyaml==$("$PY" -c 'import yaml; print(yaml.__version__)')"
for w in "$WH"/*.whl; do "$PY" -m zipfile -e "$w" var/devsite; done
rm -rf var/devsite/*.dist-info "$WH"
cp -r "$(cd .. && pwd)/shared/data/routing" var/devdata && chmod -R u+w var/devdata
du -sh var/devsite var/devdata
