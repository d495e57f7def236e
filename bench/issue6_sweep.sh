#!/usr/bin/env bash
# The issue-6 benchmark: 4 roles, both topologies, a load sweep, both decode modes and a
# KV-capacity sweep. Each step starts one app and takes the engine lock EXCLUSIVELY for that
# step only (<= ~15 min), so other people's engine runs interleave. Rows are written after
# every load point (OUT/<step>/results.json); rerunning skips steps already done.
#   bash bench/issue6_sweep.sh [OUT]      then: python -m bench.compare --from-results ...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/issue6}
PY=.venv/bin/python
LOCK=/tmp/prefillshare-engines.lock
export VLLM_HOST_IP=127.0.0.1
# bench/app_models.slim_bench_model: a slimmer SmolLM2-shaped random Llama (eight fit here).
MODEL=$($PY -c "from bench.app_models import slim_bench_model; print(slim_bench_model())" | tail -1)
COMMON=(--model "$MODEL" --roles planner,coder,tool,critic --sessions 12 --turns 4
        --initial-context-tokens 1500 --observation-tokens 300 500 --output-tokens 8
        --max-model-len 4096 --decode-kv-cache-space-gib 0.25 --max-run-s 240)
LOW=${LOW:-0.05:2}
MID=${MID:-0.2:6}
HIGH=${HIGH:-1:12}

step() {  # step NAME ARGS...: one app, one lock acquisition
  local name=$1; shift
  if [ -s "$OUT/$name/done" ]; then echo "[sweep] $name: done already"; return 0; fi
  mkdir -p "$OUT/$name"
  echo "[sweep] $name: waiting for the exclusive engine lock ($(date -u +%T))"
  flock -x "$LOCK" bash -c '
    avail=$(free -g | awk "/^Mem:/ {print \$7}")
    echo "[sweep] '"$name"': lock held $(date -u +%T), ${avail} GiB available"
    if [ "$avail" -lt 20 ]; then echo "[sweep] '"$name"': under 20 GiB free, skipped"; exit 3; fi
    timeout '"${STEP_TIMEOUT:-1000}"' "$0" "$@"' "$PY" -m bench.compare "${COMMON[@]}" --out-dir "$OUT/$name" "$@" \
    > "$OUT/$name/log.txt" 2>&1
  local rc=$?
  echo "[sweep] $name: rc $rc ($(date -u +%T))"
  [ $rc -eq 0 ] && date -u > "$OUT/$name/done"
  return 0
}

# Each step: 3-6 min to start eight engines plus the load points. Capped steps stop each
# point at 240 s (COMMON); the capacity steps run every session to the end (no cap that
# could trim the tail), with a longer per-call timeout.
# The app's stage timeouts go up as well (default 120 s): the overloaded baseline's prefills
# took longer than that (base-cap-504: 504s that ended sessions early and left those calls
# out of its p95).
UNCAPPED=(--max-run-s 1500 --request-timeout-s 900 --server-timeout-s 840)
step base-small --topologies baseline     --kv-cache-space-gib 0.125 --loads "$LOW,$MID"
step ps-small   --topologies prefillshare --kv-cache-space-gib 0.125 --loads "$LOW,$MID"
step ps-reuse   --topologies prefillshare --kv-cache-space-gib 0.125 --loads "$MID" \
                --decode-kv-mode reuse --label-suffix=-reuse
# KV capacity: 0.25 GiB = 128 blocks per prefill engine. Twelve sessions' contexts (~26
# blocks each at the end) overflow every per-role cache of the baseline (312 blocks needed
# per role), while the shared pool needs ~78 per replica.
STEP_TIMEOUT=2100 step base-cap --topologies baseline --kv-cache-space-gib 0.25 \
                --loads "$HIGH" "${UNCAPPED[@]}"
STEP_TIMEOUT=2100 step ps-cap --topologies prefillshare --kv-cache-space-gib 0.25 \
                --loads "$HIGH" "${UNCAPPED[@]}"
echo "[sweep] all steps tried"
