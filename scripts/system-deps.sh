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
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} for the test suite" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null 2>&1
    $SUDO apt-get install -y -q "${need[@]}" >/dev/null
  }
  # chrony's package starts a daemon that would discipline the machine clock; the tests
  # start their own with -x, so stop the packaged one.
  if [[ " ${need[*]} " == *" chrony "* ]]; then
    $SUDO pkill -x chronyd >/dev/null 2>&1 || true
  fi
fi
