#!/usr/bin/env bash
# Collect the benchmark figures of `make bench` into one Markdown report.
#
#   scripts/bench-report.sh OUT_DIR [CRITERION_DIR]  > OUT_DIR/REPORT.md
#
# Reads criterion's estimates (CRITERION_DIR, default
# ${CARGO_TARGET_DIR:-target}/criterion), the append bench's JSON
# (OUT_DIR/append.json) and the load tool's JSON reports (OUT_DIR/load-max.json,
# OUT_DIR/load-rate.json, OUT_DIR/load-100k.json). Missing inputs show as "n/a".
# Needs jq and awk.
set -euo pipefail

out=${1:?usage: bench-report.sh OUT_DIR [CRITERION_DIR]}
crit=${2:-${CARGO_TARGET_DIR:-target}/criterion}
command -v jq >/dev/null || { echo "bench-report.sh needs jq" >&2; exit 1; }

# Format a number with thousands separators (integers) or 2 decimals.
fmt() { awk -v n="$1" -v d="${2:-0}" 'BEGIN {
  if (n == "" || n == "null") { print "n/a"; exit }
  s = sprintf("%." d "f", n); split(s, p, "."); i = p[1]; neg = ""
  if (substr(i, 1, 1) == "-") { neg = "-"; i = substr(i, 2) }
  o = ""; while (length(i) > 3) { o = "," substr(i, length(i) - 2) o; i = substr(i, 1, length(i) - 3) }
  o = neg i o; if (d > 0) o = o "." p[2]; print o }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "null" || b == "null" || b == 0) print "n/a"; else printf "%.0f %%\n", 100 * a / b }'; }

# Elements per second of a criterion benchmark (mean estimate).
per_sec() {
  local dir="$crit/$1/$2"
  [[ -f $dir/new/estimates.json ]] || { echo ""; return; }
  local ns elems
  ns=$(jq '.mean.point_estimate' "$dir/new/estimates.json")
  elems=$(jq '.throughput.Elements // 1' "$dir/new/benchmark.json" 2>/dev/null || echo 1)
  awk -v ns="$ns" -v e="$elems" 'BEGIN { printf "%.1f\n", e * 1e9 / ns }'
}
# Mean time per element in microseconds.
micros() {
  local dir="$crit/$1/$2"
  [[ -f $dir/new/estimates.json ]] || { echo ""; return; }
  local ns elems
  ns=$(jq '.mean.point_estimate' "$dir/new/estimates.json")
  elems=$(jq '.throughput.Elements // 1' "$dir/new/benchmark.json" 2>/dev/null || echo 1)
  awk -v ns="$ns" -v e="$elems" 'BEGIN { printf "%.2f\n", ns / e / 1000 }'
}
j() { local file=$1; shift; [[ -f $file ]] && jq -r "$@" "$file" || echo ""; }

row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }

crit_row() { # name group figure ceiling unit target
  local f c
  f=$(per_sec "$2" "$3"); c=$(per_sec "$2" "$4")
  row "$1" "$(fmt "$f") $5/s ($(micros "$2" "$3") µs)" "$(fmt "$c") $5/s ($(micros "$2" "$4") µs)" "$(ratio "$f" "$c")" "$6"
}

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || echo unknown)
load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

echo "# mskflow benchmark report"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) CPUs ($cpu), $mem memory; load average at report time $load"
echo "- command: \`${BENCH_COMMAND:-make bench}\`"
echo "- release build; criterion in quick mode (1 s warm-up, 3 s measurement); fsync'd store on the machine's disk"
echo
row "benchmark" "figure" "ceiling (same input)" "fraction of ceiling" "target"
row "---" "---" "---" "---" "---"
crit_row "FHIR referral Bundle parse + validate (\`parse_process_message\`) vs \`serde_json::Value\` of the same bytes" fhir_parse parse_process_message ceiling_json_value "Bundles" "-"
crit_row "triage (intake \`handle\`, shipped rules) vs cloning the command" intake_triage handle ceiling_clone "referrals" "-"
crit_row "envelope encode + decode (\`ReferralReceived\`, ~9 kB) vs \`Value\` round trip of the same bytes" envelope encode_decode ceiling_value_round_trip "events" "-"

a="$out/append.json"
for i in 0 1 2; do
  w=$(j "$a" ".[$i].writers")
  [[ -n $w ]] || continue
  f=$(j "$a" ".[$i].appends_per_sec"); c=$(j "$a" ".[$i].ceiling_appends_per_sec")
  b=$(j "$a" ".[$i].mean_batch"); p99=$(j "$a" ".[$i].p99_ms"); bytes=$(j "$a" ".[$i].event_bytes")
  if [[ $w == 1 ]]; then what="embedded append, 1 writer (one fsync per append)"; else what="embedded append, $w writers (group commit, mean batch $(fmt "$b" 1))"; fi
  row "$what vs plain-file append + fdatasync of the same bytes ($bytes B/event)" "$(fmt "$f") appends/s (p99 $(fmt "$p99" 2) ms)" "$(fmt "$c") appends/s" "$(ratio "$f" "$c")" "-"
done

f=$(per_sec gateway_replay views_fold); c=$(per_sec gateway_replay ceiling_decode)
row "projection replay: gateway views fold over 10,000 intake events (in memory) vs typed decode of the same envelopes" "$(fmt "$f") events/s" "$(fmt "$c") events/s" "$(ratio "$f" "$c")" "≥ 200,000 events/s"

m="$out/load-max.json"
row "referrals accepted durably over HTTP, as fast as possible ($(fmt "$(j "$m" .referrals)") referrals, $(j "$m" .concurrency) clients, all services in one process; failed: $(j "$m" .failed))" \
  "$(fmt "$(j "$m" .throughput)") referrals/s (p50 $(fmt "$(j "$m" .latency_ms.p50)" 2) ms, p99 $(fmt "$(j "$m" .latency_ms.p99)" 2) ms)" "-" "-" "≥ 5,000 Bundles/s"
r="$out/load-rate.json"
row "latency at a steady $(fmt "$(j "$r" .target_rate)")/s for $(fmt "$(j "$r" '.referrals / .target_rate')" 0) s (open loop, from the intended send; achieved $(fmt "$(j "$r" .throughput)")/s; failed: $(j "$r" .failed))" \
  "p99 $(fmt "$(j "$r" .latency_ms.p99)" 2) ms (p50 $(fmt "$(j "$r" .latency_ms.p50)" 2), p90 $(fmt "$(j "$r" .latency_ms.p90)" 2), p99.9 $(fmt "$(j "$r" .latency_ms.p999)" 2), max $(fmt "$(j "$r" .latency_ms.max)" 2) ms)" "-" "-" "p99 ≤ 10 ms"
row "2xx to the triage decision on the analysts' stream, at $(fmt "$(j "$r" .target_rate)")/s" \
  "p50 $(fmt "$(j "$r" .end_to_end_ms.p50)" 2) ms, p99 $(fmt "$(j "$r" .end_to_end_ms.p99)" 2) ms, max $(fmt "$(j "$r" .end_to_end_ms.max)" 2) ms" "-" "-" "-"
h="$out/load-100k.json"
row "replay of the whole log from the store into fresh gateway views, after $(fmt "$(j "$h" .accepted)") referrals" \
  "$(fmt "$(j "$h" .replay.events_per_sec)") events/s ($(fmt "$(j "$h" .replay.events)") events)" "-" "-" "≥ 200,000 events/s"
row "all-in-one resident memory after $(fmt "$(j "$h" .accepted)") referrals (VmRSS; the load client shares the process)" \
  "$(fmt "$(j "$h" .rss_mib)" 1) MiB (peak $(fmt "$(j "$h" .peak_rss_mib)" 1) MiB)" "-" "-" "≤ 150 MB"
row "the same run's throughput ($(j "$h" .concurrency) clients)" "$(fmt "$(j "$h" .throughput)") referrals/s (p99 $(fmt "$(j "$h" .latency_ms.p99)" 2) ms)" "-" "-" "≥ 5,000 Bundles/s"
echo
echo "Targets are goals, not assertions. Ceilings are measured on the same input in the same run:"
echo "the fraction says how close each hot path is to the cheapest thing that could do its job."
