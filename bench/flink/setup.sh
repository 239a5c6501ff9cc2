#!/usr/bin/env bash
# Installs the Flink jars and builds the Flink NEXMark peer (issue 25).
#
#   bench/flink/setup.sh
#
# The jars come from `pip install --no-deps apache-flink-libraries` (its
# pyflink/lib) into bench/flink/.deps (ignored; skipped when there already).
# FLINK_LIBS=<a directory holding pyflink/lib> uses an existing install
# instead (e.g. one made with `pip install --no-deps --target DIR
# apache-flink-libraries`). FLINK_VERSION pins the package (default: the
# newest; 2.3.0 was measured). The classes go to bench/flink/classes
# (ignored). Needs Java 17 (javac) and, for the download, pip.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
deps=${FLINK_LIBS:-$here/.deps}
lib=$deps/pyflink/lib
if ! ls "$lib"/flink-dist-*.jar >/dev/null 2>&1; then
  [ -z "${FLINK_LIBS:-}" ] || { echo "no flink-dist jar under $lib" >&2; exit 1; }
  pkg=apache-flink-libraries${FLINK_VERSION:+==$FLINK_VERSION}
  echo "installing $pkg into $deps" >&2
  python3 -m pip install --quiet --no-deps --target "$deps" "$pkg"
fi
ls "$lib"/flink-dist-*.jar >/dev/null
out=$here/classes
src=$(find "$here/src" -name '*.java' | sort)
# Rebuild only when a source is newer than the build stamp.
if [ ! -f "$out/.stamp" ] || [ -n "$(find "$here/src" -name '*.java' -newer "$out/.stamp")" ] \
    || [ "$(cat "$out/.lib" 2>/dev/null)" != "$lib" ]; then
  rm -rf "$out" && mkdir -p "$out"
  # shellcheck disable=SC2086
  javac -nowarn -d "$out" -cp "$lib/*" $src
  echo "$lib" > "$out/.lib"
  touch "$out/.stamp"
  echo "built the Flink peer into $out" >&2
fi
# What a caller runs: the classpath of the peer.
echo "$out:$lib/*"
