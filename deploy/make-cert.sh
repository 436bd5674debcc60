#!/usr/bin/env bash
# Makes a certificate for local use of the compose stack (deploy/compose.yaml): a CA of its own
# and, signed by it, the gateways' certificate for the names they are reached by (gateway-a,
# gateway-b, localhost, 127.0.0.1, ::1), ECDSA P-256, valid 365 days. Into deploy/tls/:
#
#   ca.crt        the CA to trust: `curl --cacert deploy/tls/ca.crt https://localhost:8443/...`
#   ca.key        the CA's key (mode 0600; nothing mounts it)
#   gateway.crt   the gateways' chain (leaf, then the CA): [http.tls] cert_file
#   gateway.key   its key: [http.tls] key_file. Mode 0644, so that the containers' user 65532
#                 reads it through a bind mount whatever the engine's user mapping: this is a
#                 certificate for trying the stack on one machine, not for production (there:
#                 a certificate of your CA, the key as a secret owned by 65532, mode 0400;
#                 docs/docker.md, "A real certificate").
#
# Usage: deploy/make-cert.sh [--force]   (existing files are kept unless --force)
#   TLS_DIR=PATH     where to write (default deploy/tls)
#   TLS_NAMES="…"    extra DNS names for the certificate (e.g. the host's name)
set -euo pipefail
DEPLOY=$(cd "$(dirname "$0")" && pwd)
DIR=${TLS_DIR:-$DEPLOY/tls}
command -v openssl >/dev/null || { echo "make-cert: openssl is needed (apt-get install openssl)" >&2; exit 1; }
if [ -f "$DIR/gateway.crt" ] && [ -f "$DIR/gateway.key" ] && [ "${1:-}" != --force ]; then
  echo "make-cert: $DIR/gateway.crt exists (--force makes a new one)" >&2
  exit 0
fi
mkdir -p "$DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
umask 077
SAN="DNS:gateway-a,DNS:gateway-b,DNS:localhost,IP:127.0.0.1,IP:::1"
for name in ${TLS_NAMES:-}; do SAN+=",DNS:$name"; done

openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key"
openssl req -x509 -new -key "$WORK/ca.key" -sha256 -days 365 -subj "/CN=Busgate local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$WORK/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/gateway.key.sec1"
# PKCS#8, the form every TLS library reads.
openssl pkcs8 -topk8 -nocrypt -in "$WORK/gateway.key.sec1" -out "$WORK/gateway.key"
openssl req -new -key "$WORK/gateway.key" -subj "/CN=busgate gateway" -out "$WORK/gateway.csr" 2>/dev/null
printf '%s\n' "subjectAltName=$SAN" "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$WORK/ext"
openssl x509 -req -in "$WORK/gateway.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 365 -sha256 -extfile "$WORK/ext" -out "$WORK/leaf.crt" 2>/dev/null
cat "$WORK/leaf.crt" "$WORK/ca.crt" >"$WORK/gateway.crt"

install -m 0600 "$WORK/ca.key" "$DIR/ca.key"
install -m 0644 "$WORK/ca.crt" "$DIR/ca.crt"
install -m 0644 "$WORK/gateway.crt" "$DIR/gateway.crt"
install -m 0644 "$WORK/gateway.key" "$DIR/gateway.key"
echo "make-cert: $DIR/gateway.crt for $SAN (trust $DIR/ca.crt)" >&2
