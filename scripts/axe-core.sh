#!/usr/bin/env bash
# axe-core, the accessibility checker the self-referral browser test runs in
# each page (tests/self_referral.rs), from the npm registry into
# ~/.cache/mskflow/axe-core (about 3 MB, a few seconds).
#
#   scripts/axe-core.sh install   install it unless it is already there
#   scripts/axe-core.sh path      print the path of axe.min.js
#
# Set MSKFLOW_AXE to use another copy of axe.min.js instead.
set -euo pipefail

VERSION=4.14.1
DIR="${HOME}/.cache/mskflow/axe-core"
SCRIPT="$DIR/node_modules/axe-core/axe.min.js"

path() {
  if [ -n "${MSKFLOW_AXE:-}" ]; then
    echo "$MSKFLOW_AXE"
  else
    echo "$SCRIPT"
  fi
}

install() {
  if [ -n "${MSKFLOW_AXE:-}" ] || grep -qs "\"version\": \"$VERSION\"" "$DIR/node_modules/axe-core/package.json"; then
    echo "axe-core: $(path)" >&2
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "axe-core: npm is missing (install Node.js), or set MSKFLOW_AXE" >&2
    exit 1
  fi
  echo "axe-core: installing axe-core@$VERSION (npm)" >&2
  mkdir -p "$DIR"
  npm install --prefix "$DIR" --no-audit --no-fund --silent "axe-core@$VERSION" >&2
  echo "axe-core: $SCRIPT" >&2
}

case "${1:-install}" in
  path) path ;;
  install) install ;;
  *)
    echo "usage: $0 [install|path]" >&2
    exit 2
    ;;
esac
