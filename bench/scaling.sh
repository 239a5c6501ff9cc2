#!/usr/bin/env bash
# keyed-sum throughput of Spate and of the timely-dataflow peer by worker
# count, alternating, RUNS runs each: for a machine with more cores than this
# project's 2-core VM (the device machine some sessions are lent).
#
#   bench/scaling.sh [RECORDS] [RUNS] [WORKERS...]     (defaults: 100000000 3 1 2 4 8)
#
# Prints one JSON line per run (the benchmarks' own), then the median
# records/s of each side and their ratio per worker count. Expects
# `cargo build --release` and `cargo build --release -p spate-bench --bin
# peer-timely` done (or SPATE and TIMELY set to the binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-100000000}
runs=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
workers=("$@")
[ ${#workers[@]} -gt 0 ] || workers=(1 2 4 8)
spate=${SPATE:-target/release/spate}
timely=${TIMELY:-target/release/peer-timely}
rate() { grep -o '"records_per_s":[0-9.]*' | tail -1 | cut -d: -f2; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for w in "${workers[@]}"; do
  s=(); t=()
  for _ in $(seq "$runs"); do
    out=$("$spate" bench throughput --query keyed-sum --records "$records" --workers "$w" --json 2>/dev/null | tail -1)
    echo "$out"; s+=("$(echo "$out" | rate)")
    out=$("$timely" --records "$records" --workers "$w" --json 2>/dev/null | tail -1)
    echo "$out"; t+=("$(echo "$out" | rate)")
  done
  ms=$(printf '%s\n' "${s[@]}" | median); mt=$(printf '%s\n' "${t[@]}" | median)
  echo "workers $w: spate median $ms records/s, timely median $mt records/s, ratio $(awk -v a="$ms" -v b="$mt" 'BEGIN {printf "%.3f", a/b}')"
done
