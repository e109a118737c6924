#!/usr/bin/env bash
# Build gpuhub's images with no registry: a Debian root filesystem from debootstrap is imported
# as the base image, then ordinary `docker build` layers go on top.  Cached: an image that
# already exists with the same build inputs is not built again.
#
#   images/build.sh            # base + singleuser
#   images/build.sh node       # Debian 13 base + the swarm test rig's node image
#   images/build.sh agent      # the node agent (a global swarm service on GPU nodes)
#   images/build.sh all        # all three
#   images/build.sh pytorch    # singleuser + a PyTorch kernel (CUDA wheels from PyPI)
#   images/build.sh workshop   # pytorch + a TensorFlow kernel in a venv of its own
#   images/build.sh hub        # the hub: JupyterHub, its proxy, gpuhub and its services
#   images/build.sh postgres|registry|caddy|prometheus   # the stack's other services
#   images/build.sh stack      # the five images of the stack (deploy/stack)
#   GPUHUB_HUB_SOURCE_REV=v0.1.0 GPUHUB_HUB_IMAGE=gpuhub/hub:0.1.0 images/build.sh hub
#                              # the hub of an older release (git archive of that revision)
#   FORCE=1 images/build.sh    # rebuild everything
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BASE_IMAGE=${GPUHUB_BASE_IMAGE:-gpuhub/debian-base:bookworm}
SINGLEUSER_IMAGE=${GPUHUB_SINGLEUSER_IMAGE:-gpuhub/singleuser:latest}
SUITE=${GPUHUB_DEBIAN_SUITE:-bookworm}
NODE_BASE_IMAGE=${GPUHUB_NODE_BASE_IMAGE:-gpuhub/debian-base:trixie}
NODE_IMAGE=${GPUHUB_NODE_IMAGE:-gpuhub/swarm-node:trixie}
AGENT_IMAGE=${GPUHUB_AGENT_IMAGE:-gpuhub/node-agent:latest}
PYTORCH_IMAGE=${GPUHUB_PYTORCH_IMAGE:-gpuhub/pytorch:latest}
WORKSHOP_IMAGE=${GPUHUB_WORKSHOP_IMAGE:-gpuhub/workshop:latest}
HUB_IMAGE=${GPUHUB_HUB_IMAGE:-gpuhub/hub:latest}
HUB_SOURCE_REV=${GPUHUB_HUB_SOURCE_REV:-}
CACHE=${GPUHUB_IMAGE_CACHE:-/var/cache/gpuhub}
FORCE=${FORCE:-0}

log() { printf '[images] %s\n' "$*" >&2; }

# The Debian mirror the host's apt already uses; debootstrap needs one by URL.
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { log "no Debian mirror found in the host's apt sources"; exit 1; }
  printf '%s\n' "$uri"
}

image_label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# build_base SUITE IMAGE: a Debian SUITE root filesystem imported as IMAGE
build_base() {
  local SUITE=$1 BASE_IMAGE=$2
  if [ "$FORCE" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
    return
  fi
  command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }
  local root="$CACHE/rootfs-$SUITE"
  if [ "$FORCE" = 1 ] || [ ! -f "$root/.complete" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    log "debootstrap $SUITE into $root"
    debootstrap --variant=minbase "$SUITE" "$root" "$(debian_mirror)" >"$CACHE/debootstrap-$SUITE.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-$SUITE.log" >&2; exit 1; }
    touch "$root/.complete"
  fi
  log "importing $root as $BASE_IMAGE"
  tar -C "$root" --exclude=./.complete -c . | docker import - "$BASE_IMAGE" >/dev/null
}

# build_cached IMAGE BASE_IMAGE CONTEXT [EXTRA]: docker build CONTEXT on BASE_IMAGE, unless IMAGE
# was built from the same files and base (a digest of both, and of EXTRA, is kept in the image's
# label).  Images built FROM one of ours pass the base's image id as EXTRA: a rebuilt base then
# rebuilds them too.
build_cached() {
  local image=$1 base=$2 ctx=$3 extra=${4:-} digest
  shift $(($# < 4 ? $# : 4))  # the rest: more `docker build` arguments (labels, build args)
  digest=$( (cd "$ctx" && find . -type f ! -name host-ca.crt -print0 | sort -z | xargs -0 sha256sum; echo "$base${extra:+ $extra}") | sha256sum | cut -c1-16)
  if [ "$FORCE" != 1 ] && [ "$(image_label "$image" org.gpuhub.build-digest)" = "$digest" ]; then
    log "$image up to date"
    return
  fi
  log "building $image"
  docker build -q --build-arg "BASE_IMAGE=$base" "$@" \
    --label "org.gpuhub.build-digest=$digest" -t "$image" "$ctx" >/dev/null
}

build_singleuser() {
  local ctx="$here/singleuser"
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  cp -r "$ctx"/. "$tmp"/
  # TLS to PyPI may be intercepted by a CA only the host trusts: hand the host's bundle in.
  cp /etc/ssl/certs/ca-certificates.crt "$tmp/host-ca.crt"
  build_cached "$SINGLEUSER_IMAGE" "$BASE_IMAGE" "$tmp"
}

# The swarm rig's node: Debian 13's dockerd (Debian 12's rejects generic-resource tasks on workers)
build_node() {
  build_cached "$NODE_IMAGE" "$NODE_BASE_IMAGE" "$here/node"
}

# The node agent: the `node` extra's dependencies (read from pyproject.toml: no list kept here)
# and gpuhub's core and node packages, installed with --no-deps (no JupyterHub).  The build runs
# the agent's --help-all; tests/node/test_agent_image.py checks the agent imports nothing else.
build_agent() {
  local tmp repo="$here/.."
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  cp -r "$here/agent"/. "$tmp"/
  python3 "$here/agent/extra_requirements.py" "$repo/pyproject.toml" node >"$tmp/requirements.txt"
  mkdir -p "$tmp/src/gpuhub_spawner"
  cp "$repo/pyproject.toml" "$repo/README.md" "$tmp/src/"
  cp "$repo/gpuhub_spawner/__init__.py" "$tmp/src/gpuhub_spawner/"
  cp -r "$repo/gpuhub_spawner/core" "$repo/gpuhub_spawner/node" "$tmp/src/gpuhub_spawner/"
  find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
  cp /etc/ssl/certs/ca-certificates.crt "$tmp/host-ca.crt"
  build_cached "$AGENT_IMAGE" "$BASE_IMAGE" "$tmp"
}

# The hub: gpuhub installed non-editable from a copy of the source (the working tree, or `git
# archive` of GPUHUB_HUB_SOURCE_REV for an older release's hub, which needs a name of its own).
build_hub() {
  local tmp repo="$here/.." version
  local files=(pyproject.toml README.md jupyterhub_config.py gpuhub_spawner hub_services)
  if [ -n "$HUB_SOURCE_REV" ] && [ "$HUB_IMAGE" = gpuhub/hub:latest ]; then
    log "GPUHUB_HUB_SOURCE_REV builds an older hub: name it, e.g. GPUHUB_HUB_IMAGE=gpuhub/hub:0.1.0"
    exit 2
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  cp -r "$here/hub"/. "$tmp"/
  mkdir -p "$tmp/src"
  if [ -n "$HUB_SOURCE_REV" ]; then
    git -C "$repo" archive "$HUB_SOURCE_REV" -- "${files[@]}" | tar -x -C "$tmp/src"
  else
    (cd "$repo" && tar -c --exclude=__pycache__ "${files[@]}") | tar -x -C "$tmp/src"
  fi
  version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$tmp/src/pyproject.toml")
  cp /etc/ssl/certs/ca-certificates.crt "$tmp/host-ca.crt"
  build_cached "$HUB_IMAGE" "$BASE_IMAGE" "$tmp" "" --build-arg "GPUHUB_VERSION=$version"
}

# The stack's other services (postgres, registry, caddy, prometheus): Debian packages and a
# script; Prometheus's image also holds deploy/prometheus's files.
build_service() {
  local name=$1 tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  cp -r "$here/$name"/. "$tmp"/
  if [ "$name" = prometheus ]; then
    cp -r "$here/../deploy/prometheus" "$tmp/deploy-prometheus"
  fi
  build_cached "gpuhub/$name:latest" "$BASE_IMAGE" "$tmp"
}

# The framework images: built FROM ours, so keyed on the base's id as well as their own files.
# They are GBs each: the version a rebuild replaced is removed at the end (drop_replaced).
REPLACED=()
build_derived() {
  local image=$1 base=$2 ctx=$3 old
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  build_cached "$image" "$base" "$ctx" "$(docker image inspect -f '{{.Id}}' "$base")"
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    REPLACED=("$old" "${REPLACED[@]}")
  fi
}

# Remove the replaced framework images, children first; one still in use (a container, a tag of
# its own, a child image) is kept and named.  Never forced.
drop_replaced() {
  local id tags
  for id in "${REPLACED[@]}"; do
    tags=$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null) || tags=gone
    case "$tags" in
      gone) ;;
      0) docker image rm "$id" >/dev/null 2>&1 || log "kept the replaced image $id: still in use" ;;
      *) log "kept the replaced image $id: it has a tag of its own" ;;
    esac
  done
}

mkdir -p "$CACHE"
what=${1:-singleuser}
case "$what" in
  singleuser|all|pytorch|workshop)
    build_base "$SUITE" "$BASE_IMAGE"
    build_singleuser
    log "done: $SINGLEUSER_IMAGE" ;;&
  pytorch|workshop)
    build_derived "$PYTORCH_IMAGE" "$SINGLEUSER_IMAGE" "$here/pytorch"
    log "done: $PYTORCH_IMAGE" ;;&
  workshop)
    build_derived "$WORKSHOP_IMAGE" "$PYTORCH_IMAGE" "$here/workshop"
    log "done: $WORKSHOP_IMAGE" ;;&
  pytorch|workshop)
    drop_replaced ;;
  node|all)
    build_base trixie "$NODE_BASE_IMAGE"
    build_node
    log "done: $NODE_IMAGE" ;;&
  agent|all)
    build_base "$SUITE" "$BASE_IMAGE"
    build_agent
    log "done: $AGENT_IMAGE" ;;
  hub|postgres|registry|caddy|prometheus|stack)
    build_base "$SUITE" "$BASE_IMAGE" ;;&
  hub|stack)
    build_hub
    log "done: $HUB_IMAGE" ;;&
  postgres|registry|caddy|prometheus)
    build_service "$what"
    log "done: gpuhub/$what:latest" ;;
  stack)
    for service in postgres registry caddy prometheus; do
      build_service "$service"
    done
    log "done: the stack's images" ;;
  singleuser|node|hub) ;;
  *) log "usage: images/build.sh [singleuser|node|agent|pytorch|workshop|all|hub|postgres|registry|caddy|prometheus|stack]"; exit 2 ;;
esac
