#!/usr/bin/env bash
# Make this machine ready to run (and test) gpuhub on one host. Idempotent; run as root.
#   deploy/setup-host.sh          # to run the hub (deploy/gpuhub-up)
#   deploy/setup-host.sh --test   # to run the tests too (deploy/gpuhub-test, CI)
#   - a Docker engine (Debian's docker.io), started here if none is running
#   - the Python virtual environment .venv with gpuhub installed (with --test: and its test extra)
#   - configurable-http-proxy (npm)
#   - with --test: PostgreSQL server binaries, Debian's Chromium + chromedriver and Prometheus
#   - the local images (images/build.sh: debootstrap + docker import, no registry needed)
# Environment: GPUHUB_SKIP_IMAGES=1 skips the image build.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[setup] %s\n' "$*" >&2; }

for_tests=0
case "${1:-}" in
  --test) for_tests=1 ;;
  "") ;;
  *) log "usage: deploy/setup-host.sh [--test]"; exit 2 ;;
esac

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v git >/dev/null || need_apt+=(git)
# the host firewall that keeps user servers off host services (the hub refuses to start without it)
command -v iptables >/dev/null || need_apt+=(iptables)
# deploy/swarm/make-tls.sh (mutual TLS to a swarm manager; the swarm tests use it)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v npm >/dev/null || need_apt+=(npm)
if [ "$for_tests" = 1 ]; then
  # PostgreSQL server binaries: the ledger's tests run against a real, throwaway cluster
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  # Debian's Chromium for the browser tests (tools that download their own browser cannot run here)
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
  # Prometheus (the metrics tests start /usr/bin/prometheus themselves; the system service is not used)
  [ -x /usr/bin/prometheus ] || need_apt+=(prometheus)
  # Debian's image registry (tests/support/registry.py starts /usr/bin/docker-registry itself)
  [ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  hookdir=""
  if ! command -v nvidia-container-runtime-hook >/dev/null; then
    # FAKE for machines without the NVIDIA driver: a no-op hook named like the real one makes
    # dockerd accept GPU DeviceRequests, so allocation can be tested. It gives no GPU access.
    hookdir=/usr/local/lib/gpuhub-fake-nvidia
    mkdir -p "$hookdir"
    printf '#!/bin/sh\n# FAKE NVIDIA hook installed by gpuhub deploy/setup-host.sh: does nothing.\nexit 0\n' \
      >"$hookdir/nvidia-container-runtime-hook"
    chmod 0755 "$hookdir/nvidia-container-runtime-hook"
    log "no NVIDIA driver hook here: starting dockerd with gpuhub's FAKE no-op hook"
  fi
  log "starting dockerd (log: /var/log/gpuhub-dockerd.log)"
  PATH="${hookdir:+$hookdir:}$PATH" nohup dockerd >/var/log/gpuhub-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up:"; tail -20 /var/log/gpuhub-dockerd.log >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
# the hub needs gpuhub's own dependencies only; the tests add the `test` extra (pytest, selenium…)
spec=. stamp=.venv/.gpuhub-installed
[ "$for_tests" = 0 ] || { spec=".[test]"; stamp=.venv/.gpuhub-installed-test; }
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing gpuhub ($spec) into .venv"
  .venv/bin/pip install -q -e "$spec"
  touch "$stamp"
fi

if ! command -v configurable-http-proxy >/dev/null; then
  log "installing configurable-http-proxy"
  npm install -g --silent configurable-http-proxy >/dev/null 2>&1
fi

if [ "${GPUHUB_SKIP_IMAGES:-0}" != 1 ]; then
  images/build.sh
fi
