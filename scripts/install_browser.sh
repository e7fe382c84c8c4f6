#!/usr/bin/env bash
# Installs Debian's chromium for the real-browser test (tests/test_app_browser.py) when it is
# missing: apt-get as root, or through sudo. Called by `make test` (and so by .ci/run).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "mcssl: the browser test needs Debian chromium; run: sudo apt-get install chromium" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mcssl: the browser test needs chromium and this is not a Debian/Ubuntu system;" \
    "install chromium so that \`chromium\` is on PATH" >&2
  exit 1
fi
echo "mcssl: installing chromium for the browser test (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
