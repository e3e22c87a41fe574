#!/bin/sh
# The secured compose stack's TLS material and the service principal's password, made once by the
# one-shot `kafka-secrets` service (deploy/compose.secure.yml) into two named volumes:
#
#   $1 (volume broker-secrets, the broker's /etc/kafka/secrets; no other service mounts it)
#     kafka.keystore.p12   the broker's key and certificate chain (PKCS#12, what the apache/kafka
#                          image's KAFKA_SSL_KEYSTORE_FILENAME expects)
#     keystore.password    its password (KAFKA_SSL_KEYSTORE_CREDENTIALS, KAFKA_SSL_KEY_CREDENTIALS)
#   $2 (volume client-secrets, mounted read-only by the workers and the setup job)
#     ca.pem               the CA certificate: clients verify the broker with it (ssl.ca.location)
#     svc.password         the SCRAM-SHA-512 password of User:svc, the workers' principal
#
# Nothing here is committed: a fresh CA and fresh random passwords per stack. The CA's private key
# lives only in a temporary folder of this container, so nothing can sign further certificates.
# The broker's certificate names `kafka` (the compose network) and `localhost` (the host, through
# the published port): clients check the name they connect to against it.
# Runs again on every `up` and keeps what exists; `docker compose ... down -v` removes the volumes,
# and the next `up` makes everything anew.
set -eu

broker_dir=${1:?usage: make-secrets.sh BROKER_DIR CLIENT_DIR}
client_dir=${2:?usage: make-secrets.sh BROKER_DIR CLIENT_DIR}

if [ -s "$broker_dir/kafka.keystore.p12" ] && [ -s "$client_dir/ca.pem" ] && [ -s "$client_dir/svc.password" ]; then
    echo "TLS material and passwords exist; keeping them"
    exit 0
fi
command -v openssl >/dev/null || { echo "openssl is not installed in this image" >&2; exit 1; }
mkdir -p "$broker_dir" "$client_dir"
broker_dir=$(cd "$broker_dir" && pwd)
client_dir=$(cd "$client_dir" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# A CA for this stack only (EC P-256 keys throughout: fast to make, accepted by Java and librdkafka).
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 825 \
    -subj "/CN=stream-infer compose CA" -keyout ca.key -out ca.pem

# The broker's key, and its certificate signed by the CA for the names clients use.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=kafka" \
    -keyout kafka.key -out kafka.csr
cat > kafka.ext <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:kafka, DNS:localhost
EXT
openssl x509 -req -in kafka.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 825 \
    -extfile kafka.ext -out kafka.pem

# Key and chain (leaf, then CA) in a PKCS#12 keystore under a random password.
openssl rand -hex 24 > keystore.password
openssl pkcs12 -export -name kafka -in kafka.pem -inkey kafka.key -certfile ca.pem \
    -passout file:keystore.password -out kafka.keystore.p12

# User:svc's SCRAM password: the setup job registers it with the broker, the workers log in with it.
openssl rand -hex 24 > svc.password

cp kafka.keystore.p12 keystore.password "$broker_dir/"
cp ca.pem svc.password "$client_dir/"
# Readable by the broker (uid 1000 in apache/kafka) and the workers (uid 10001). Each volume is
# mounted only by the services that need its files, so the volume, not the mode, is the boundary.
chmod 0444 "$broker_dir"/kafka.keystore.p12 "$broker_dir"/keystore.password "$client_dir"/ca.pem "$client_dir"/svc.password
echo "made a CA, the broker's keystore and User:svc's password"
