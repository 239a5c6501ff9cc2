#!/usr/bin/env bash
# What a keyed-sum run costs Spate and timely's peer at several sizes: the
# median `seconds` of RUNS runs of each, alternating the two, at each record
# count (100 000 keys). Differences between sizes give the cost of starting
# (the smallest), of building the state (every key new in the first
# 100 000 records) and of a record past them.
#
#   bench/fixedcost.sh WORKERS RUNS RECORDS...
#
# Needs `cargo build --release` and
# `cargo build --release -p spate-bench --bin peer-timely` first.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bench/fixedcost.sh WORKERS RUNS RECORDS..." >&2
  exit 2
fi
workers=$1; runs=$2
shift 2
dir=$(cd "$(dirname "$0")/.." && pwd)/target/release
for b in "$dir/spate" "$dir/peer-timely"; do
  [ -x "$b" ] || { echo "$b is not built" >&2; exit 1; }
done
secs() { grep -o '"seconds":[0-9.e-]*' | tail -1 | cut -d: -f2; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for n in "$@"; do
  s=""; t=""
  for _ in $(seq "$runs"); do
    s+="$("$dir/spate" bench throughput --query keyed-sum --records "$n" --workers "$workers" --json | secs) "
    t+="$("$dir/peer-timely" --records "$n" --workers "$workers" --json | secs) "
  done
  ms=$(tr ' ' '\n' <<<"$s" | grep . | median)
  mt=$(tr ' ' '\n' <<<"$t" | grep . | median)
  printf 'records=%s workers=%s spate %.2f ms timely %.2f ms\n' "$n" "$workers" \
    "$(awk -v x="$ms" 'BEGIN {print x * 1000}')" "$(awk -v x="$mt" 'BEGIN {print x * 1000}')"
done
