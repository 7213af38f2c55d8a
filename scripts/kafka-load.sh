#!/usr/bin/env bash
# End-to-end throughput over Kafka: a local Kafka-protocol broker, the five
# services as separate release processes, and `mskflow load` against the
# gateway.
#
#   scripts/kafka-load.sh [REFERRALS] [CONCURRENCY]     (default 5000 32)
#
# Builds release binaries (CARGO_TARGET_DIR is honoured; MSKFLOW_BIN=DIR uses
# binaries already built) and the broker if missing; leaves the logs in a temporary directory it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5000}"
C="${2:-32}"
TARGET="${CARGO_TARGET_DIR:-target}"
scripts/kafka-broker.sh install >/dev/null
# MSKFLOW_BIN=target/debug uses binaries already built (no release build).
if [ -z "${MSKFLOW_BIN:-}" ]; then cargo build --release --workspace --bins; fi
BIN="${MSKFLOW_BIN:-$TARGET/release}"
BROKER="$(scripts/kafka-broker.sh path)"
DIR="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

KPORT="$(free_port)"
(cd "$DIR" && exec env -u LISTENER_URL -u STORAGE_ENGINE RUST_LOG=warn "$BROKER" broker \
  --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
  --storage-engine sqlite://broker.db >"$DIR/broker.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null && break; sleep 0.1; done

export MSKFLOW_KAFKA_BROKERS="127.0.0.1:$KPORT" MSKFLOW_KAFKA_PARTITIONS=6 MSKFLOW_KAFKA_REPLICATION=1 \
  MSKFLOW_KAFKA_SESSION_TIMEOUT_MS=6000 MSKFLOW_LOG_FORMAT=json RUST_LOG=warn
"$BIN/mskflow" topics create

INTAKE="127.0.0.1:$(free_port)"; ASSESS="127.0.0.1:$(free_port)"; SCHED="127.0.0.1:$(free_port)"
OUTC="127.0.0.1:$(free_port)"; HTTP="127.0.0.1:$(free_port)"
start() { local name="$1"; shift; "$@" >"$DIR/$name.log" 2>&1 & PIDS+=($!); }
start intake "$BIN/mskflow-intake" --grpc-addr "$INTAKE" --ops-addr "127.0.0.1:$(free_port)"
start assessment "$BIN/mskflow-assessment" --grpc-addr "$ASSESS" --ops-addr "127.0.0.1:$(free_port)"
start scheduling "$BIN/mskflow-scheduling" --grpc-addr "$SCHED" --ops-addr "127.0.0.1:$(free_port)"
start outcomes "$BIN/mskflow-outcomes" --grpc-addr "$OUTC" --ops-addr "127.0.0.1:$(free_port)"
start gateway "$BIN/mskflow-gateway" --http-addr "$HTTP" --intake-url "http://$INTAKE" \
  --outcomes-url "http://$OUTC" --auth-mode dev
for _ in $(seq 600); do curl -sf "http://$HTTP/health/ready" >/dev/null && break; sleep 0.2; done
TOKEN="$(grep -o 'Authorization: Bearer [^ ]*' "$DIR/gateway.log" | head -1 | cut -d' ' -f3)"
echo "logs in $DIR; broker 127.0.0.1:$KPORT; gateway http://$HTTP"
"$BIN/mskflow" load --url "http://$HTTP/fhir" --token "$TOKEN" --referrals "$N" --concurrency "$C"
