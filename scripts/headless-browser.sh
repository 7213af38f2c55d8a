#!/usr/bin/env bash
# The headless browser the dashboard test drives (tests/analytics_views.rs):
# Debian's chromium-headless-shell (about 58 MB, some 20 seconds to install).
#
#   scripts/headless-browser.sh install   install it unless a browser is
#                                         already there (needs root or
#                                         password-less sudo for apt-get)
#   scripts/headless-browser.sh path      print the browser's path
#
# Set MSKFLOW_BROWSER to use another Chromium-family binary instead.
set -euo pipefail

find_browser() {
  if [ -n "${MSKFLOW_BROWSER:-}" ]; then
    echo "$MSKFLOW_BROWSER"
    return
  fi
  for name in chromium-headless-shell chromium google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return
    fi
  done
  return 1
}

install() {
  if browser=$(find_browser); then
    echo "browser: $browser" >&2
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "browser: chromium-headless-shell is missing and apt-get needs root:" >&2
      echo "  sudo apt-get install --no-install-recommends chromium-headless-shell" >&2
      echo "  (or set MSKFLOW_BROWSER to a Chromium-family browser)" >&2
      exit 1
    fi
  fi
  echo "browser: installing chromium-headless-shell (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null
  fi
  find_browser >&2
}

case "${1:-install}" in
  path) find_browser ;;
  install) install ;;
  *)
    echo "usage: $0 [install|path]" >&2
    exit 2
    ;;
esac
