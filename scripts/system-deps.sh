#!/usr/bin/env bash
# Debian packages the test suite drives as real parts, installed only where missing.
set -euo pipefail
need=()
command -v chronyd >/dev/null 2>&1 || [ -x /usr/sbin/chronyd ] || need+=(chrony)
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
command -v xsetroot >/dev/null 2>&1 || need+=(x11-xserver-utils)
# The dashboard tests drive Debian's Chromium with Playwright (never its own downloads).
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
# The pipeline's failover tests start their own JetStream cluster with Debian's nats-server.
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# The real-player tests (issue 16) play clips through Debian's mpv; ffmpeg generates them.
command -v mpv >/dev/null 2>&1 || need+=(mpv)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} for the test suite" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  # Packaged daemons must not start during the install (chrony's would discipline the
  # machine clock; the tests start their own with -x): Debian's policy-rc.d tells
  # invoke-rc.d so. Ours only if there is none, and removed afterwards.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# playproof system-deps: no daemon starts during the install\nexit 101\n' \
      | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null 2>&1
    $SUDO apt-get install -y -q "${need[@]}" >/dev/null
  }
fi
