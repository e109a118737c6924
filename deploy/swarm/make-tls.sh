#!/usr/bin/env bash
# Make the certificates for mutual TLS between the hub and a swarm manager's Docker engine.
#
#   deploy/swarm/make-tls.sh DIR MANAGER_NAME_OR_IP [MORE_NAMES_OR_IPS...]
#
# Needed only when the hub cannot run on a manager with the engine's unix socket (the simpler,
# preferred way).  Never expose the Docker API without TLS client verification: anyone who
# reaches a plaintext port (every user's server can) is root on every node.
#
# Writes, into DIR (which must not exist yet; keys are created mode 0600):
#   DIR/ca/ca.pem, ca-key.pem        the CA: keep ca-key.pem offline, it signs every access
#   DIR/server/ca.pem, server-cert.pem, server-key.pem
#                                    for the manager: /etc/docker/tls/ and in daemon.json
#                                    "tlsverify": true, "tlscacert": "/etc/docker/tls/ca.pem",
#                                    "tlscert": "/etc/docker/tls/server-cert.pem",
#                                    "tlskey": "/etc/docker/tls/server-key.pem",
#                                    "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]
#   DIR/client/ca.pem, cert.pem, key.pem
#                                    for the hub: DOCKER_CERT_PATH=DIR/client DOCKER_TLS_VERIFY=1
#                                    GPUHUB_DOCKER_HOST=tcp://MANAGER:2376
#
# The server certificate names every MANAGER_NAME_OR_IP given (the address the hub dials must be
# one of them).  Validity: CA_DAYS (3650) and CERT_DAYS (825).  Needs openssl.  Tested by
# tests/swarm/ (the rig's manager and hub use these files).
set -euo pipefail

usage() { echo "usage: $0 DIR MANAGER_NAME_OR_IP [MORE_NAMES_OR_IPS...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
out=$1
shift
command -v openssl >/dev/null || { echo "make-tls.sh: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "make-tls.sh: $out exists and is not empty; choose a new directory (nothing was changed)" >&2
  exit 1
fi

san=""
for name in "$@"; do
  case "$name" in
    *[!0-9.]*) if [[ "$name" == *:* ]]; then entry="IP:$name"; else entry="DNS:$name"; fi ;;
    *) entry="IP:$name" ;;
  esac
  san="${san:+$san,}$entry"
done

umask 077
mkdir -p "$out/ca" "$out/server" "$out/client"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = gpuhub
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
EOF

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# sign CSR_SUBJECT KEY CERT EXTENSIONS
sign() {
  openssl req -new -config "$work/openssl.cnf" -key "$2" -subj "$1" -out "$work/req.csr"
  openssl x509 -req -in "$work/req.csr" -CA "$out/ca/ca.pem" -CAkey "$out/ca/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days "${CERT_DAYS:-825}" -sha256 \
    -extfile "$work/openssl.cnf" -extensions "$4" -out "$3" 2>/dev/null
}

key "$out/ca/ca-key.pem"
openssl req -new -x509 -config "$work/openssl.cnf" -extensions ca_ext -key "$out/ca/ca-key.pem" \
  -subj "/CN=gpuhub swarm Docker CA" -days "${CA_DAYS:-3650}" -sha256 -out "$out/ca/ca.pem"
key "$out/server/server-key.pem"
sign "/CN=$1" "$out/server/server-key.pem" "$out/server/server-cert.pem" server_ext
key "$out/client/key.pem"
sign "/CN=gpuhub-hub" "$out/client/key.pem" "$out/client/cert.pem" client_ext
cp "$out/ca/ca.pem" "$out/server/ca.pem"
cp "$out/ca/ca.pem" "$out/client/ca.pem"
chmod 0644 "$out"/ca/ca.pem "$out"/server/ca.pem "$out"/server/server-cert.pem "$out"/client/ca.pem "$out"/client/cert.pem
chmod 0755 "$out" "$out/server" "$out/client"

echo "CA:     $out/ca (keep ca-key.pem offline)"
echo "server: $out/server -> the manager's /etc/docker/tls/ (names: $san)"
echo "client: $out/client -> the hub: DOCKER_CERT_PATH=$out/client DOCKER_TLS_VERIFY=1"
