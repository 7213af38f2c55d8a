#!/usr/bin/env bash
# Throughput of the Kafka deployment against the broker's own ceiling, in
# one run (`make bench-kafka`):
#
#   1. a local Kafka-protocol broker (nisshi, scripts/kafka-broker.sh);
#   2. the five services as separate release processes, one instance each,
#      and `mskflow load` at each size of SIZES in turn (as fast as
#      possible, CONCURRENCY clients);
#   3. `mskflow kafka-bench`: the broker's ceiling with a plain client
#      (keyed, acks=all, idempotent; the records sized like the topic set's,
#      read back while written), converted to referrals/s with the records
#      per referral counted on the topics after step 2;
#   4. a second system on fresh topics with two gateway, two intake and two
#      assessment instances (one scheduling, one outcomes), loaded with
#      SCALE_SIZE referrals spread over both gateways; compared with the
#      one-instance run of the same size.
#
#   scripts/kafka-load.sh [SIZES...]     (default: 1000 5000 20000)
#
# Environment: CONCURRENCY (32), SCALE_SIZE (5000; 0 skips step 4),
# BENCH_RECORDS (20000), PARTITIONS (6), MSKFLOW_KAFKA_STORAGE (the broker's
# --storage-engine, default memory://nisshi/: 7x the SQLite engine here), MSKFLOW_BIN=DIR (binaries
# already built; otherwise a release build, honouring CARGO_TARGET_DIR),
# KEEP_LOGS=1 (keep the temporary directory, printed).
# CPU seconds of the broker and of each service process are printed per run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 5000 20000)
C="${CONCURRENCY:-32}"
SCALE_SIZE="${SCALE_SIZE:-5000}"
BENCH_RECORDS="${BENCH_RECORDS:-20000}"
PARTITIONS="${PARTITIONS:-6}"
STORAGE="${MSKFLOW_KAFKA_STORAGE:-memory://nisshi/}"
TARGET="${CARGO_TARGET_DIR:-target}"
scripts/kafka-broker.sh install >/dev/null
if [ -z "${MSKFLOW_BIN:-}" ]; then cargo build --release --workspace --bins; fi
BIN="${MSKFLOW_BIN:-$TARGET/release}"
BROKER="$(scripts/kafka-broker.sh path)"
DIR="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
SYSTEM=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP_LOGS:-}" ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT

# CPU seconds (user + system) a process has used.
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

KPORT="$(free_port)"
(cd "$DIR" && exec env -u LISTENER_URL -u STORAGE_ENGINE RUST_LOG=warn "$BROKER" broker \
  --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
  --storage-engine "$STORAGE" >"$DIR/broker.log" 2>&1) &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null && break; sleep 0.1; done

export MSKFLOW_KAFKA_BROKERS="127.0.0.1:$KPORT" MSKFLOW_KAFKA_PARTITIONS="$PARTITIONS" \
  MSKFLOW_KAFKA_REPLICATION=1 MSKFLOW_KAFKA_SESSION_TIMEOUT_MS=6000 MSKFLOW_LOG_FORMAT=json RUST_LOG=warn
# One HS256 secret for every gateway; `mskflow load` signs a token per
# sending practice with it.
SECRET="$DIR/hs256.secret"
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$SECRET"

start() { local name="$1"; shift; "$@" >"$DIR/$name.log" 2>&1 & PIDS+=($!); SYSTEM+=("$name=$!"); }

# start_system PREFIX INSTANCES: the five services on topics PREFIX.*, with
# INSTANCES gateways, intakes and assessments; sets URLS.
start_system() {
  local prefix="$1" n="$2" i
  export MSKFLOW_KAFKA_TOPIC_PREFIX="$prefix"
  "$BIN/mskflow" topics create >/dev/null
  SYSTEM=()
  URLS=""
  local sched="127.0.0.1:$(free_port)" outc="127.0.0.1:$(free_port)"
  start "$prefix-scheduling" "$BIN/mskflow-scheduling" --grpc-addr "$sched" --ops-addr "127.0.0.1:$(free_port)"
  start "$prefix-outcomes" "$BIN/mskflow-outcomes" --grpc-addr "$outc" --ops-addr "127.0.0.1:$(free_port)"
  for i in $(seq "$n"); do
    local intake="127.0.0.1:$(free_port)" http="127.0.0.1:$(free_port)"
    start "$prefix-intake-$i" "$BIN/mskflow-intake" --grpc-addr "$intake" --ops-addr "127.0.0.1:$(free_port)"
    start "$prefix-assessment-$i" "$BIN/mskflow-assessment" --grpc-addr "127.0.0.1:$(free_port)" --ops-addr "127.0.0.1:$(free_port)"
    start "$prefix-gateway-$i" "$BIN/mskflow-gateway" --http-addr "$http" --intake-url "http://$intake" \
      --outcomes-url "http://$outc" --auth-mode jwt --auth-hs256-secret-file "$SECRET"
    URLS="${URLS:+$URLS,}http://$http/fhir"
  done
  local u
  for u in ${URLS//,/ }; do
    for _ in $(seq 600); do curl -sf "${u%/fhir}/health/ready" >/dev/null && break; sleep 0.2; done
    curl -sf "${u%/fhir}/health/ready" >/dev/null || { echo "gateway ${u%/fhir} not ready; logs in $DIR" >&2; KEEP_LOGS=1; exit 1; }
  done
}

stop_system() {
  local entry
  for entry in "${SYSTEM[@]}"; do kill "${entry#*=}" 2>/dev/null || true; done
  for entry in "${SYSTEM[@]}"; do wait "${entry#*=}" 2>/dev/null || true; done
}

# load NAME REFERRALS: one load run over $URLS, its JSON in $DIR/NAME.json
# and the CPU seconds of each process in $DIR/NAME.cpu.
load() {
  local name="$1" n="$2" entry
  local before=() b0
  b0="$(cpu "$BROKER_PID")"
  for entry in "${SYSTEM[@]}"; do before+=("$(cpu "${entry#*=}")"); done
  "$BIN/mskflow" load --url "$URLS" --hs256-secret-file "$SECRET" --referrals "$n" \
    --concurrency "$C" --json "$DIR/$name.json" | sed "s/^/  /"
  {
    echo "broker $(awk -v a="$b0" -v b="$(cpu "$BROKER_PID")" 'BEGIN { printf "%.1f", b - a }')"
    local k=0
    for entry in "${SYSTEM[@]}"; do
      echo "${entry%%=*} $(awk -v a="${before[$k]}" -v b="$(cpu "${entry#*=}")" 'BEGIN { printf "%.1f", b - a }')"
      k=$((k + 1))
    done
  } >"$DIR/$name.cpu"
  echo "  CPU seconds: $(tr '\n' ' ' <"$DIR/$name.cpu")"
}

echo "== one instance of each service (broker storage $STORAGE, $PARTITIONS partitions, $C clients)"
start_system mskflow-a 1
TOTAL=0
for n in "${SIZES[@]}"; do
  echo "-- $n referrals"
  load "one-$n" "$n"
  TOTAL=$((TOTAL + n))
done

echo "== broker ceiling ($BENCH_RECORDS records, sized like the topic set's)"
MSKFLOW_KAFKA_TOPIC_PREFIX=mskflow-a "$BIN/mskflow" kafka-bench --referrals "$TOTAL" \
  --records "$BENCH_RECORDS" --json "$DIR/ceiling.json" | sed "s/^/  /"
stop_system

if [ "$SCALE_SIZE" -gt 0 ]; then
  echo "== two gateway, intake and assessment instances (fresh topics)"
  start_system mskflow-b 2
  echo "-- $SCALE_SIZE referrals over $URLS"
  load "two-$SCALE_SIZE" "$SCALE_SIZE"
  stop_system
fi

python3 - "$DIR" "$SCALE_SIZE" "${SIZES[@]}" <<'EOF'
import json, os, sys
d, scale, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ceiling = json.load(open(os.path.join(d, "ceiling.json")))
c = ceiling["ceiling"]
cref = ceiling.get("ceiling_referrals_per_sec") or 0.0
print()
print(f"broker ceiling: {c['records_per_sec']:.0f} records/s, {c['mb_per_sec']:.1f} MB/s, "
      f"produce->consume p50 {c['produce_to_consume_ms']['p50']:.1f} ms p99 {c['produce_to_consume_ms']['p99']:.1f} ms "
      f"(mean record {c['mean_bytes']:.0f} B); {ceiling.get('records_per_referral') or 0:.2f} records per referral "
      f"-> ceiling {cref:.0f} referrals/s")
print()
print("| run | referrals | failed | referrals/s | p50 ms | p99 ms | fraction of ceiling |")
print("| --- | --- | --- | --- | --- | --- | --- |")
def row(label, name):
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        return
    r = json.load(open(path))
    frac = f"{100 * r['throughput'] / cref:.0f} %" if cref else "-"
    print(f"| {label} | {r['referrals']} | {r['failed']} | {r['throughput']:.0f} | "
          f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | {frac} |")
for n in sizes:
    row("1 instance each", f"one-{n}")
if scale > 0:
    row("2 gateway, intake, assessment", f"two-{scale}")
EOF
