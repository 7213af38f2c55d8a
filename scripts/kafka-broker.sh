#!/usr/bin/env bash
# The Kafka-protocol broker the tests use: nisshi, built from crates.io once
# and kept in a cache directory (~/.cache/mskflow/nisshi by default).
#
#   scripts/kafka-broker.sh install   build it if missing (about 18 minutes cold)
#   scripts/kafka-broker.sh path      print the binary's path
#
# Tests start and stop their own broker on a free loopback port
# (crates/eventlog-kafka/src/testing.rs); set MSKFLOW_KAFKA_BROKER to use
# another binary.
set -euo pipefail

VERSION="0.7.0-pre.2"
ROOT="${MSKFLOW_CACHE:-$HOME/.cache/mskflow}/nisshi"
BIN="$ROOT/bin/nisshi"

case "${1:-install}" in
  path)
    echo "${MSKFLOW_KAFKA_BROKER:-$BIN}"
    ;;
  install)
    if [ -n "${MSKFLOW_KAFKA_BROKER:-}" ]; then
      echo "broker: using MSKFLOW_KAFKA_BROKER=$MSKFLOW_KAFKA_BROKER"
      exit 0
    fi
    if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
      echo "broker: nisshi $VERSION at $BIN"
      exit 0
    fi
    echo "broker: building nisshi $VERSION into $ROOT (once; about 18 minutes on 2 cores)"
    start=$(date +%s)
    CARGO_TARGET_DIR="$ROOT/build" cargo install nisshi --version "$VERSION" --locked \
      --features dynostore,libsql --root "$ROOT"
    rm -rf "$ROOT/build"
    echo "broker: built in $(( $(date +%s) - start )) s"
    ;;
  *)
    echo "usage: $0 install|path" >&2
    exit 2
    ;;
esac
