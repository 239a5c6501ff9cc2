#!/usr/bin/env bash
# Checks that the Flink peer's generator makes the same events as Spate's:
# the first N events of `spate nexmark generate` and of the Java port, as
# JSON lines, byte for byte.
#
#   bench/flink/check-generator.sh [N] [SEED] [TPS]      (defaults: 20000 42 1000)
#
# SPATE overrides target/release/spate; FLINK_LIBS as in setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-20000}; seed=${2:-42}; tps=${3:-1000}
spate=${SPATE:-${CARGO_TARGET_DIR:-target}/release/spate}
[ -x "$spate" ] || cargo build --release --bin spate
cp=$(bench/flink/setup.sh)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$spate" nexmark generate --events "$n" --seed "$seed" --tps "$tps" --out "$tmp/spate.jsonl"
java -cp "$cp" spate.bench.NexmarkFlink generate --events "$n" --seed "$seed" --tps "$tps" > "$tmp/java.jsonl"
if cmp -s "$tmp/spate.jsonl" "$tmp/java.jsonl"; then
  echo "generator check: $n events (seed $seed, tps $tps) identical ($(wc -c < "$tmp/spate.jsonl") bytes)"
else
  echo "generator check: the events differ:" >&2
  diff "$tmp/spate.jsonl" "$tmp/java.jsonl" | head -6 | cut -c1-400 >&2
  exit 1
fi
