#!/usr/bin/env bash
# The Benchmark v2 sweep (issue 16): four systems, three repeats per point, a load sweep from
# light to past the baseline's collapse, and a KV-size sweep at the high-load point. Each step
# starts one system and holds the engine lock EXCLUSIVELY for that step only; rows are written
# as they are measured (OUT/<step>/results.json) and a rerun skips steps already done. Then
# one report per pair of systems from the raw rows:
#   bash bench/issue16_sweep.sh [OUT]          (DRY=1: print the steps, run nothing)
#   PATTERN=reflexion bash bench/issue16_sweep.sh runs/issue16-reflexion
# The defaults are issue 6's workload (12 sessions of 4 turns): hours per step on this 2-core
# box. SESSIONS, TURNS, LOADS, HIGH, KVS and KV_SYSTEMS scale it down; the run reported in
# docs/benchmarks.md is bench/issue16_quick.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/issue16}
PY=.venv/bin/python
LOCK=/tmp/prefillshare-engines.lock
export VLLM_HOST_IP=127.0.0.1
# issue 6's model (bench/app_models.slim_bench_model: eight engines fit here).
MODEL=${MODEL:-$($PY -c "from bench.app_models import slim_bench_model; print(slim_bench_model())" | tail -1)}
COMMON=(--model "$MODEL" --roles planner,coder,tool,critic --sessions "${SESSIONS:-12}"
        --turns "${TURNS:-4}"
        --initial-context-tokens 1500 --observation-tokens 300 500 --output-tokens 8
        --max-model-len 4096 --decode-kv-cache-space-gib 0.25 --repeats "${REPEATS:-3}"
        --pattern "${PATTERN:-react}"
        --max-run-s "${MAX_RUN_S:-1500}" --request-timeout-s 900 --server-timeout-s 840)
LOADS=${LOADS:-0.05:2,0.2:6,0.5:9,1:12}
HIGH=${HIGH:-1:12}
SYSTEMS=(baseline prefillshare prefillshare-lora vllm-lora)
read -r -a KV_SYSTEMS <<< "${KV_SYSTEMS:-${SYSTEMS[*]}}"  # the KV sweep's systems
read -r -a KVS <<< "${KVS:-0.125 0.5}"  # its prefill KV sizes (0.25 GiB: the load sweep)

sample_memory() {  # the box's memory in use (MemTotal - MemAvailable) every 20 s, by step
  while true; do
    awk -v t="$(date -u +%T)" -v s="$(cat "$OUT/.step" 2>/dev/null || echo idle)" \
      '/MemTotal/{tot=$2} /MemAvailable/{av=$2} END{printf "%s %s %.2f\n", t, s, (tot-av)/1048576}' \
      /proc/meminfo >> "$OUT/mem_in_use.txt"
    sleep 20
  done
}

step() {  # step NAME ARGS...: one system, one lock acquisition
  local name=$1; shift
  if [ -s "$OUT/$name/done" ]; then echo "[sweep] $name: done already"; return 0; fi
  if [ -n "${DRY:-}" ]; then echo "[sweep] $name: $PY -m bench.compare ${COMMON[*]} $*"; return 0; fi
  mkdir -p "$OUT/$name"
  echo "$name" > "$OUT/.step"
  echo "[sweep] $name: waiting for the exclusive engine lock ($(date -u +%T))"
  flock -x "$LOCK" timeout "${STEP_TIMEOUT:-14400}" "$PY" -m bench.compare "${COMMON[@]}" \
    --out-dir "$OUT/$name" "$@" > "$OUT/$name/log.txt" 2>&1
  local rc=$?
  echo "[sweep] $name: rc $rc ($(date -u +%T))"
  [ $rc -eq 0 ] && date -u > "$OUT/$name/done"
  echo idle > "$OUT/.step"
  return 0
}

if [ -z "${DRY:-}" ]; then
  mkdir -p "$OUT"
  sample_memory & SAMPLER=$!
  trap 'kill $SAMPLER 2>/dev/null' EXIT
fi
for system in "${SYSTEMS[@]}"; do  # the load sweep at 0.25 GiB of prefill KV per engine
  step "load-$system" --topologies "$system" --kv-cache-space-gib 0.25 --loads "$LOADS"
done
for kv in "${KVS[@]}"; do  # the KV sweep at high load (0.25 GiB is in the load sweep)
  for system in "${KV_SYSTEMS[@]}"; do
    step "kv$kv-$system" --topologies "$system" --kv-cache-space-gib "$kv" --loads "$HIGH"
  done
done
[ -n "${DRY:-}" ] && exit 0
$PY -m bench.v2_report "$OUT" --out-dir "$OUT/report"
echo "[sweep] reports in $OUT/report (into docs: python -m bench.v2_report $OUT --doc docs/benchmarks.md)"
