#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets) for N seconds each (default 60)
# and print, per target, the executions, the corpus size and the crashes.
#
#   scripts/fuzz.sh [seconds]
#
# cargo-fuzz is installed if missing (crates.io, into MSKFLOW_TOOLS, default
# ~/.cache/mskflow/tools). The toolchain is the pinned stable one;
# RUSTC_BOOTSTRAP=1 lets it take the flags cargo-fuzz needs (sanitizer,
# coverage instrumentation). New inputs go to fuzz/corpus-work/<target>;
# the seeds in fuzz/corpus/<target> are only read. A crash is kept in
# fuzz/artifacts/<target>/ and makes the script exit 1.
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: $0 [seconds]" >&2
    exit 2
    ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${MSKFLOW_TOOLS:-$HOME/.cache/mskflow/tools}"
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
cd "$root"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz into $tools" >&2
    cargo install cargo-fuzz --locked --root "$tools"
fi

# FUZZ_FLAGS: extra cargo fuzz flags for build and run, e.g. "--dev --sanitizer none".
read -r -a flags <<<"${FUZZ_FLAGS:-}"
cargo fuzz build --fuzz-dir fuzz "${flags[@]}"
mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)

failed=0
summary=()
for target in "${targets[@]}"; do
    work="fuzz/corpus-work/$target"
    artifacts="fuzz/artifacts/$target"
    log="fuzz/target/fuzz-$target.log"
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$target"
    before=$(find "$artifacts" -type f | wc -l)
    echo "== $target: ${seconds}s" >&2
    status=0
    cargo fuzz run --fuzz-dir fuzz "${flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corpus=$(find "$work" "fuzz/corpus/$target" -type f | wc -l)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="error (exit $status, see $log)"
    fi
    if [ "$status" -ne 0 ]; then
        failed=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -n 8 >&2 || true
    fi
    summary+=("$(printf '%-22s %8ss %12s execs %8s/s %6s inputs   crashes: %s' \
        "$target" "$seconds" "${execs:-?}" "${rate:-?}" "$corpus" "$crashes")")
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
