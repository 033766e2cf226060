#!/usr/bin/env bash
# make-demo-certs.sh - the demo PKI of the `tofu` command (feature `tls`): a CA, a server
# certificate for localhost and 127.0.0.1, and a client certificate, all ECDSA P-256, valid
# for 100 years. Written to src/cli/certs/ and compiled into the binary, for `tofu bench`,
# `tofu soak` and the demo over tls|. TEST ONLY: the private keys are public; never trust
# this CA anywhere else. The library's tests make their certificates at test time (rcgen).
#
# Usage: scripts/make-demo-certs.sh   (needs the openssl command)
set -euo pipefail
out=$(cd "$(dirname "$0")/.." && pwd)/src/cli/certs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
days=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -days $days -subj "/CN=tofu demo CA (test only)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca.pem"

leaf() { # name cn san eku
  key "$out/$1.key"
  openssl req -new -key "$out/$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' \
    "$3" "$4" > "$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$out/ca.pem" -CAkey "$tmp/ca.key" -CAserial "$tmp/ca.srl" -CAcreateserial \
    -days $days -extfile "$tmp/$1.ext" -out "$out/$1.pem" 2>/dev/null
}
leaf server "tofu demo server" "DNS:localhost,IP:127.0.0.1" serverAuth
leaf client "tofu-demo-client" "DNS:client.tofu.demo" clientAuth
echo "written to $out"
