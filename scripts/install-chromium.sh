#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for tests/integration/test_browser.py (the report check).
# Idempotent: does nothing when a chromium binary is already on PATH. Needs root (or sudo) and
# an apt mirror; prints why it cannot install instead of failing `make test` silently, so the
# browser test then fails with its own clear message.
set -euo pipefail

for bin in chromium chromium-browser; do
    if command -v "$bin" >/dev/null 2>&1; then
        echo "install-chromium: $(command -v "$bin") already installed"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; install Chromium yourself (tests/integration/test_browser.py needs it)" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-chromium: not root and no password-less sudo; run: apt-get install chromium" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "install-chromium: installed $(command -v chromium) ($(chromium --version 2>/dev/null || echo '?'))"
