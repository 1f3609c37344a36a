#!/usr/bin/env bash
# Makes a throwaway CA and certificates it signs, for docker-compose.yml and .ci/smoke:
#
#   ca.crt, ca.key           the CA (trust ca.crt: sslrootcert, grpcurl -cacert)
#   server.crt, server.key   DNS localhost, invitations, postgres; IP 127.0.0.1
#   client.crt, client.key   CN=invitations-dev-client, for mTLS (grpcurl -cert/-key)
#
# Usage: deploy/dev-certs.sh [DIR]     (default: deploy/dev-certs, which git ignores)
#
# Only openssl is needed. Valid for 30 days; run it again to renew (the service picks
# renewed files up by itself). Production certificates come from your CA or cert-manager
# (docs/DEPLOY.md), never from this script, and no key is ever committed.
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")" && pwd)/dev-certs}"
mkdir -p "$dir"
# Containers of other users (the service's uid 65532) read ca.crt from it.
chmod 0755 "$dir"
cd "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=invitations dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

# leaf NAME COMMON_NAME EXTENSIONS: NAME.crt and NAME.key, signed by the CA.
leaf() {
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 30 \
    -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
leaf server localhost "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:invitations,DNS:postgres,IP:127.0.0.1"
leaf client invitations-dev-client "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl

# Certificates are public; keys stay the owner's (containers read them as root, or copy them).
chmod 0644 ./*.crt
echo "dev-certs: CA, server and client certificates in $dir"
