#!/usr/bin/env bash
# keyed-sum throughput of several Spate builds, round-robin: each round runs
# every build once, in the order given, so that a change in this shared
# machine's speed falls on all of them alike. How this project compares a
# change with the build before it (e.g. a build of the commit before, kept
# as a copy of target/release/spate).
#
#   bench/roundrobin.sh WORKERS ROUNDS RECORDS KEYS BUILD...
#
# Prints each build's median records/s and the median, over rounds, of its
# ratio to the first build's run in the same round.
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: bench/roundrobin.sh WORKERS ROUNDS RECORDS KEYS BUILD..." >&2
  exit 2
fi
workers=$1; rounds=$2; records=$3; keys=$4
shift 4
rate() { grep -o '"records_per_s":[0-9.]*' | tail -1 | cut -d: -f2; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A runs ratios
for _ in $(seq "$rounds"); do
  first=""
  for b in "$@"; do
    r=$("$b" bench throughput --query keyed-sum --records "$records" --workers "$workers" --keys "$keys" --json | rate)
    [ -n "$r" ] || { echo "$b: no records_per_s in its output" >&2; exit 1; }
    [ -n "$first" ] || first=$r
    runs[$b]+="$r "
    ratios[$b]+="$(awk -v a="$r" -v f="$first" 'BEGIN {printf "%.6f", a / f}') "
  done
done
for b in "$@"; do
  m=$(tr ' ' '\n' <<<"${runs[$b]}" | grep . | median)
  q=$(tr ' ' '\n' <<<"${ratios[$b]}" | grep . | median)
  printf '%-40s median %.1f M records/s, ratio to the first %.3f\n' "$b" "$(awk -v m="$m" 'BEGIN {print m / 1e6}')" "$q"
done
echo "workers=$workers keys=$keys records=$records rounds=$rounds"
