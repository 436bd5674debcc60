#!/usr/bin/env bash
# Builds, offline, every image deploy/compose.yaml needs, with Podman or Docker:
#
#   localhost/busgate-runtime:latest   the base: the libraries the binaries link (ldd), CA
#                                      certificates, the user 65532 (deploy/images/runtime.Dockerfile)
#   localhost/busgate:latest           deploy/Dockerfile with BINARIES=prebuilt on that base
#   localhost/busgate-nats:<version>   the pinned nats-server of deploy/install-nats.sh
#   localhost/busgate-haproxy:<ver>    the load balancer: Debian's haproxy and its libraries
#
# then prints their names (NAME=image lines on stdout) and records them in deploy/.env
# (NATS_IMAGE, LB_IMAGE, BUSGATE_IMAGE; other lines are kept), with a generated
# BUSGATE_ADMIN_TOKEN and NATS users' passwords (BUSGATE_NATS_*_PASSWORD) for those that neither
# the shell nor that file has (the file is made readable by its owner only; no secret is
# printed), and makes the gateways' certificate for local use (deploy/make-cert.sh, into
# deploy/tls/) unless one is there. After it:
#
#   podman-compose -f deploy/compose.yaml up -d      # or: docker compose -f deploy/compose.yaml up -d
#
# Usage: deploy/build-images.sh [BIN_DIR]      (default target/release: `cargo build --release`)
#   CONTAINER_ENGINE=podman|docker   default: podman when installed, else docker
#   ENV_FILE=PATH                    where to record the names; ENV_FILE= (empty) records nothing
#   ONLY="busgate nats haproxy"      build a subset (the base is built with busgate)
#
# Nothing is pulled. Needs ldd, a container engine, Python 3 (for install-nats.sh) and haproxy
# (`apt-get install haproxy`; installed here when missing, as root on Debian).
set -euo pipefail
DEPLOY=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$DEPLOY")
BIN_DIR=${1:-$ROOT/target/release}
ENV_FILE=${ENV_FILE-$DEPLOY/.env}
ONLY=${ONLY:-busgate nats haproxy}
ENGINE=${CONTAINER_ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}

die() { echo "build-images: $*" >&2; exit 1; }
command -v "$ENGINE" >/dev/null || die "no container engine: install podman (apt-get install podman) or docker"
command -v ldd >/dev/null || die "ldd is needed (Debian: libc-bin)"

# Podman keeps HEALTHCHECK only in Docker's image format, is told never to pull (Docker uses a
# local image for FROM by itself), and keeps no intermediate images (nothing here is worth caching).
ENGINE_ARGS=()
[ "$(basename "$ENGINE")" = podman ] && ENGINE_ARGS=(--format docker --pull=never --layers=false)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then REVISION+=-dirty; fi

# rootfs DIR FILE...: copies every shared library that FILE links (as ldd resolves it on this
# machine, at the same path, so the dynamic loader finds it where the binary asks), CA
# certificates, and the files a non-root, shell-less image needs.
rootfs() {
  local dir=$1 file lib
  shift
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/home/nonroot"
  chmod 1777 "$dir/tmp"
  for file in "$@"; do
    # Static binaries have nothing to copy ("not a dynamic executable", exit 1).
    ldd "$file" >/dev/null 2>&1 || continue
    if ldd "$file" | grep -q 'not found'; then
      die "$file links a library this machine does not have: $(ldd "$file" | grep 'not found' | tr -s ' \t' ' ')"
    fi
    for lib in $(ldd "$file" | grep -oE '/[^ ]+'); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
  local ca
  for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -f "$ca" ]; then cp -L "$ca" "$dir/etc/ssl/certs/ca-certificates.crt"; break; fi
  done
  [ -f "$dir/etc/ssl/certs/ca-certificates.crt" ] || die "no CA bundle found (Debian: apt-get install ca-certificates)"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$dir/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$dir/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$dir/etc/nsswitch.conf"
}

build() { # NAME DOCKERFILE CONTEXT [build args...]
  local name=$1 file=$2 ctx=$3
  shift 3
  echo "build-images: $name" >&2
  "$ENGINE" build "${ENGINE_ARGS[@]}" -q --label io.busgate.build-images=1 -t "$name" -f "$file" "$@" "$ctx" >/dev/null
}

BUILT=()
if [[ " $ONLY " == *" busgate "* ]]; then
  for b in busgate busgate-worker; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: run 'cargo build --release' (or pass the directory with the binaries)"
  done
  VERSION=$("$BIN_DIR/busgate" --version | awk '{print $2}')
  rootfs "$WORK/runtime/rootfs" "$BIN_DIR/busgate" "$BIN_DIR/busgate-worker"
  build localhost/busgate-runtime:latest "$DEPLOY/images/runtime.Dockerfile" "$WORK/runtime"
  mkdir -p "$WORK/busgate/bin"
  cp "$BIN_DIR/busgate" "$BIN_DIR/busgate-worker" "$WORK/busgate/bin/"
  # The release profile keeps line tables for profiling (37 MB of a 45 MB binary); the image
  # does not need them. Symbols stay, so a panic's backtrace still names its functions.
  if command -v objcopy >/dev/null; then
    for b in busgate busgate-worker; do objcopy --strip-debug "$WORK/busgate/bin/$b"; done
  fi
  build localhost/busgate:latest "$DEPLOY/Dockerfile" "$WORK/busgate" \
    --build-arg BINARIES=prebuilt --build-arg BIN_DIR=bin \
    --build-arg BASE=localhost/busgate-runtime:latest \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg CREATED="$CREATED"
  BUILT+=(BUSGATE_IMAGE=localhost/busgate:latest)
fi

if [[ " $ONLY " == *" nats "* ]]; then
  NATS_SERVER=$("$DEPLOY/install-nats.sh")
  NATS_VERSION=$("$NATS_SERVER" --version | sed -n 's/^nats-server: v//p')
  rootfs "$WORK/nats/rootfs" "$NATS_SERVER"
  cp -L "$NATS_SERVER" "$WORK/nats/rootfs/nats-server"
  mkdir -p "$WORK/nats/data"
  build "localhost/busgate-nats:$NATS_VERSION" "$DEPLOY/images/nats.Dockerfile" "$WORK/nats" \
    --build-arg VERSION="$NATS_VERSION"
  BUILT+=("NATS_IMAGE=localhost/busgate-nats:$NATS_VERSION")
fi

if [[ " $ONLY " == *" haproxy "* ]]; then
  if ! command -v haproxy >/dev/null && [ -x /usr/sbin/haproxy ]; then PATH=$PATH:/usr/sbin; fi
  if ! command -v haproxy >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "build-images: installing Debian's haproxy (its binary goes into the load balancer's image)" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy) >&2
    else
      die "haproxy is needed to build the load balancer's image: apt-get install haproxy"
    fi
  fi
  HAPROXY=$(command -v haproxy)
  HAPROXY_VERSION=$("$HAPROXY" -v | sed -n 's/^HAProxy version \([0-9.]*\).*/\1/p')
  rootfs "$WORK/haproxy/rootfs" "$HAPROXY"
  mkdir -p "$WORK/haproxy/rootfs/usr/sbin" "$WORK/haproxy/rootfs/usr/local/etc/haproxy"
  cp -L "$HAPROXY" "$WORK/haproxy/rootfs/usr/sbin/haproxy"
  cp "$DEPLOY/haproxy/haproxy.cfg" "$WORK/haproxy/rootfs/usr/local/etc/haproxy/haproxy.cfg"
  build "localhost/busgate-haproxy:$HAPROXY_VERSION" "$DEPLOY/images/haproxy.Dockerfile" "$WORK/haproxy" \
    --build-arg VERSION="$HAPROXY_VERSION"
  BUILT+=("LB_IMAGE=localhost/busgate-haproxy:$HAPROXY_VERSION")
fi

# The images these names had before, now untagged.
"$ENGINE" image prune -f --filter label=io.busgate.build-images=1 >/dev/null
for kv in "${BUILT[@]}"; do
  printf 'build-images: %-42s %s\n' "${kv#*=}" \
    "$("$ENGINE" image inspect --format '{{.Size}}' "${kv#*=}" | awk '{printf "%.1f MB", $1 / 1e6}')" >&2
done

# The names, for scripts (tests/container/run.sh reads them): NAME=image lines on stdout.
printf '%s\n' "${BUILT[@]}"

# Record the names where compose reads them (.env beside compose.yaml), keeping other lines.
if [ -n "$ENV_FILE" ]; then
  touch "$ENV_FILE"
  chmod 600 "$ENV_FILE"
  for kv in "${BUILT[@]}"; do
    grep -v "^${kv%%=*}=" "$ENV_FILE" >"$ENV_FILE.tmp" || true
    echo "$kv" >>"$ENV_FILE.tmp"
    cat "$ENV_FILE.tmp" >"$ENV_FILE"
    rm -f "$ENV_FILE.tmp"
  done
  # Secrets: hex (letters and digits: the NATS passwords stand in nats:// URLs).
  for var in BUSGATE_ADMIN_TOKEN BUSGATE_NATS_GATEWAY_PASSWORD BUSGATE_NATS_SERVICE1_PASSWORD \
    BUSGATE_NATS_SERVICE2_PASSWORD BUSGATE_NATS_ADMIN_PASSWORD; do
    if [ -z "${!var:-}" ] && ! grep -q "^$var=." "$ENV_FILE"; then
      echo "$var=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >>"$ENV_FILE"
      echo "build-images: generated $var in $ENV_FILE" >&2
    fi
  done
  echo "build-images: image names recorded in $ENV_FILE" >&2
  # The gateways' certificate for local use (kept when there is one: yours, or an earlier one).
  "$DEPLOY/make-cert.sh"
fi
