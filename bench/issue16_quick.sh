#!/usr/bin/env bash
# The Benchmark v2 sweep as run for docs/benchmarks.md: bench/issue16_sweep.sh at a scale this
# 2-core box finishes in under two hours (issue 6's 12 sessions of 4 turns take hours per
# step): 6 sessions of 2 turns per load point, loads 0.1:1 to 1:6, 3 repeats, KV sweep at the
# high load for the paper's baseline and PrefillShare.
#   bash bench/issue16_quick.sh [OUT]     (DRY=1: print the steps)
set -uo pipefail
cd "$(dirname "$0")/.."
export SESSIONS=${SESSIONS:-6} TURNS=${TURNS:-2} LOADS=${LOADS:-0.1:1,0.2:2,0.5:4,1:6}
export HIGH=${HIGH:-1:6} MAX_RUN_S=${MAX_RUN_S:-600}
export KV_SYSTEMS=${KV_SYSTEMS:-"baseline prefillshare"}
exec bash bench/issue16_sweep.sh "${1:-runs/issue16/quick}"
