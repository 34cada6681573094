#!/bin/sh
# A private CA and a server certificate signed by it, for NATS or the coordinator's API.
#
#   deploy/make-certs.sh DIR NAME [NAME...]
#
# writes DIR/ca.crt, DIR/tls.crt and DIR/tls.key (the server's, for the DNS names or IP
# addresses NAME...), and DIR/ca.key, which stays with whoever issues certificates: it is
# in no Secret. An existing ca.key is reused, so clients keep trusting the same ca.crt.
# Kubernetes: run it for deploy/k8s/secrets/nats-tls and deploy/k8s/secrets/api-tls (see
# kustomization.yaml), or replace those Secrets with cert-manager's. Compose runs it itself.
set -eu
dir=$1
shift
[ $# -gt 0 ] || { echo "usage: $0 DIR NAME [NAME...]" >&2; exit 2; }
umask 077
mkdir -p "$dir"
if [ ! -s "$dir/ca.key" ] || ! grep -q "BEGIN" "$dir/ca.key"; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=hangar fleet CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
san=""
for n in "$@"; do
  case $n in
    *[!0-9.]*) san="$san,DNS:$n" ;;
    *) san="$san,IP:$n" ;;
  esac
done
san=${san#,}
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
  -keyout "$dir/tls.key" -out "$dir/tls.csr"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" \
  > "$dir/tls.ext"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
  -CAcreateserial -days 825 -extfile "$dir/tls.ext" -out "$dir/tls.crt"
rm -f "$dir/tls.csr" "$dir/tls.ext" "$dir/ca.srl"
chmod 644 "$dir/ca.crt" "$dir/tls.crt"
echo "wrote $dir/ca.crt, $dir/tls.crt, $dir/tls.key for $*" >&2
