#!/usr/bin/env bash
# NEXMark on Spate and on Flink (issue 25): the same queries over the same
# events (bench/flink's generator is a port of Spate's, checked by
# bench/flink/check-generator.sh), in one process each, alternating, RUNS
# runs a query.
#
#   bench/nexmark-flink.sh [--events N] [--runs R] [--queries q0,q1,...]
#                          [--workers W] [--tps T] [--seed S] [--timeout SECS]
#
# Defaults: 10000000 events, 3 runs, every query both have, 1 worker (Flink:
# parallelism and task slots W), TPS 10000000, seed 0, 600 s a run. Prints
# each run's JSON line on stderr; on stdout one JSON object a query with the
# medians (`spate_events_per_s`, `flink_events_per_s`,
# `spate_events_per_cpu_s`, `flink_events_per_cpu_s`, `cpu_ratio` = Spate's
# per-CPU rate over Flink's) and the result counts, then a table. CPU time is
# the process's utime + stime (/proc) over the run: for Flink from the job's
# RUNNING state to its result (the local MiniCluster's start is left out).
#
# The Flink peer has all 20 of Spate's queries (q0-q5, q7-q11, q14-q22);
# q6, q12 and q13 are in neither (see src/nexmark/queries.rs). Result counts
# differ where the two emit updates differently (q4, q15-q19; docs/perf-log.md).
#
# Builds Spate (`cargo build --release --bin spate`, unless SPATE names a
# binary) and the Flink peer (bench/flink/setup.sh: FLINK_LIBS, FLINK_VERSION
# as there). JAVA_OPTS goes to the JVM.
set -euo pipefail
cd "$(dirname "$0")/.."
events=10000000 runs=3 queries="" workers=1 tps=10000000 seed=0 limit=600
while [ $# -gt 0 ]; do
  case $1 in
    --events) events=$2 ;;
    --runs) runs=$2 ;;
    --queries) queries=$2 ;;
    --workers) workers=$2 ;;
    --tps) tps=$2 ;;
    --seed) seed=$2 ;;
    --timeout) limit=$2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
if [ -n "${SPATE:-}" ]; then spate=$SPATE; else
  cargo build --release --bin spate >&2
  spate=${CARGO_TARGET_DIR:-target}/release/spate
fi
cp=$(bench/flink/setup.sh)
flink_queries=$(java -cp "$cp" spate.bench.NexmarkFlink queries)
[ -n "$queries" ] || queries=$flink_queries
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
IFS=, read -r -a list <<< "$queries"
for q in "${list[@]}"; do
  case ",$flink_queries," in *",$q,"*) ;; *) echo "$q: no Flink query (have $flink_queries)" >&2; exit 2 ;; esac
  for r in $(seq "$runs"); do
    if out=$(timeout "$limit" "$spate" bench nexmark --query "$q" --events "$events" --tps "$tps" \
        --seed "$seed" --workers "$workers" --json 2>"$tmp/err" | grep '^{' | tail -1) && [ -n "$out" ]; then
      echo "$out" | tee -a "$tmp/runs" >&2
    else
      echo "spate $q run $r failed or timed out: $(tail -3 "$tmp/err")" >&2
    fi
    # shellcheck disable=SC2086
    if out=$(timeout "$limit" java ${JAVA_OPTS:-} -cp "$cp" spate.bench.NexmarkFlink run --query "$q" \
        --events "$events" --tps "$tps" --seed "$seed" --workers "$workers" 2>"$tmp/err" \
        | grep '^{' | tail -1) && [ -n "$out" ]; then
      echo "$out" | tee -a "$tmp/runs" >&2
    else
      echo "flink $q run $r failed or timed out: $(grep -m2 -i exception "$tmp/err" || tail -2 "$tmp/err")" >&2
    fi
  done
done
touch "$tmp/runs"
python3 - "$tmp/runs" "$queries" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = []
def med(q, system, key):
    v = [r[key] for r in runs if r["query"] == q and r["system"] == system]
    return statistics.median(v) if v else None
def one(q, system, key):
    v = [r[key] for r in runs if r["query"] == q and r["system"] == system]
    return v[0] if v else None
for q in sys.argv[2].split(","):
    o = {"query": q}
    for s in ("spate", "flink"):
        o[s + "_events_per_s"] = med(q, s, "events_per_s")
        o[s + "_events_per_cpu_s"] = med(q, s, "events_per_cpu_s")
    a, b = o["spate_events_per_cpu_s"], o["flink_events_per_cpu_s"]
    o["cpu_ratio"] = round(a / b, 2) if a and b else None
    a, b = o["spate_events_per_s"], o["flink_events_per_s"]
    o["wall_ratio"] = round(a / b, 2) if a and b else None
    o["spate_results"] = one(q, "spate", "results")
    o["flink_results"] = one(q, "flink", "results")  # +I and +U rows
    o["flink_final_rows"] = one(q, "flink", "final_rows")  # +I less -D
    o["runs"] = len([r for r in runs if r["query"] == q]) // 2
    sr, fr, ff = o["spate_results"], o["flink_results"], o["flink_final_rows"]
    o["results_match"] = (None if sr is None or fr is None else
                          "all" if sr == fr else "final" if sr == ff else "no")
    print(json.dumps(o))
    rows.append(o)
f = lambda v: "-" if v is None else f"{v:,.0f}"
print()
print(f"{'query':<6}{'spate ev/s':>13}{'flink ev/s':>13}{'spate ev/cpu-s':>16}{'flink ev/cpu-s':>16}"
      f"{'cpu x':>7}{'spate rows':>12}{'flink rows':>12}{'flink final':>12}  match")
for o in rows:
    print(f"{o['query']:<6}{f(o['spate_events_per_s']):>13}{f(o['flink_events_per_s']):>13}"
          f"{f(o['spate_events_per_cpu_s']):>16}{f(o['flink_events_per_cpu_s']):>16}"
          f"{'-' if o['cpu_ratio'] is None else o['cpu_ratio']:>7}{f(o['spate_results']):>12}"
          f"{f(o['flink_results']):>12}{f(o['flink_final_rows']):>12}  {o['results_match']}")
PY
