#!/usr/bin/env bash
# Installs (idempotent) and runs the whole test suite: fast unit tests, then the slow
# end-to-end tests that start real vLLM engines, NIXL and Ray Serve on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export VLLM_HOST_IP=127.0.0.1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow" "$@"
.venv/bin/python -m pytest -q -p no:cacheprovider -m slow "$@"
