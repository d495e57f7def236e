#!/usr/bin/env bash
# The main job: install (idempotent), then run the default app (config.yaml) on a local Ray
# cluster on 127.0.0.1 with `serve deploy`. Prints the endpoints when ready; Ctrl-C stops
# the app and only the Ray processes this started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export VLLM_HOST_IP=127.0.0.1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec .venv/bin/prefillshare up "${1:-config.yaml}" "${@:2}"
