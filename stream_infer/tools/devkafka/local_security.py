"""TLS and SCRAM material for `stream-infer kafka up --secure`: a secured local development cluster.

Development only: the production worker never imports this module. It makes, in a cluster's state
directory:

- ``tls/``: a CA made here (``ca.pem``, ``ca-key.pem``), the brokers' certificate (``broker.pem``,
  the chain, and ``broker-key.pem``), and the client certificate of the service principal
  (``svc.pem``, ``svc-key.pem``) for mutual TLS; keys are unencrypted PKCS#8;
- ``credentials.json``: the SCRAM passwords of ``admin`` and ``svc``;
- ``client.properties`` (svc over SASL_SSL with PLAIN), ``client-scram.properties`` (svc over
  SASL_SSL with SCRAM-SHA-512), ``admin.properties`` (admin over SASL_SSL with PLAIN) and
  ``client-mtls.properties`` (svc over SSL with its certificate): librdkafka settings as
  ``kcat -F`` reads them.

Contracts: the CA, certificates and passwords are made once and reused by every later start of the
same state directory; every file holding a private key or a password is mode 0600. The certificates
name ``127.0.0.1`` and ``localhost`` as subject alternative names, so clients verify the broker's
hostname (librdkafka's default ``ssl.endpoint.identification.algorithm=https``). A client
certificate ``CN=svc`` maps to the principal ``User:svc``, the same principal as the SCRAM user
``svc``; the brokers' certificate is ``User:broker``, a super user like ``User:admin``.

The client listener offers SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN (all over TLS). SCRAM clients
need librdkafka 2.6.1 or newer (confluent-kafka's wheels bundle one): older ones repeat the client
nonce in their final message, which Kafka 4 rejects as invalid credentials. The kcat of current
Linux distributions is built on such a librdkafka, so client.properties and admin.properties use
PLAIN (any kcat reads them), and client-scram.properties holds the same principal with SCRAM.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stream_infer.kafka.connection import read_properties
from stream_infer.tools.devkafka.jars import KafkaSetupError

TLS_DIR = "tls"
CREDENTIALS_FILE = "credentials.json"
CLIENT_PROPERTIES = "client.properties"
ADMIN_PROPERTIES = "admin.properties"
MTLS_PROPERTIES = "client-mtls.properties"
SCRAM_PROPERTIES = "client-scram.properties"

ADMIN_USER = "admin"
SERVICE_USER = "svc"
BROKER_CN = "broker"
SUPER_USERS = (f"User:{BROKER_CN}", f"User:{ADMIN_USER}")
# SCRAM-SHA-512 and SCRAM-SHA-256 credentials for both users (created at storage format), and PLAIN
# with the same passwords (listed in the listener's JAAS config).
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
SASL_MECHANISMS = (*SCRAM_MECHANISMS, "PLAIN")
SCRAM_MECHANISM = "SCRAM-SHA-512"
# A certificate's subject "CN=svc,..." becomes the principal "svc" (User:svc), the SCRAM user's principal.
PRINCIPAL_MAPPING_RULES = "RULE:^CN=([^,]*).*$/$1/,DEFAULT"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=1825)

# Files under tls/, all made together (see ensure_material).
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
BROKER_CERT = "broker.pem"
BROKER_KEY = "broker-key.pem"
SERVICE_CERT = f"{SERVICE_USER}.pem"
SERVICE_KEY = f"{SERVICE_USER}-key.pem"
_TLS_FILES = (CA_CERT, CA_KEY, BROKER_CERT, BROKER_KEY, SERVICE_CERT, SERVICE_KEY)


@dataclass(frozen=True)
class Material:
    """Paths and secrets of one secure state directory (what :func:`ensure_material` returns)."""

    state_dir: Path
    admin_password: str
    service_password: str

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / TLS_DIR

    def tls(self, name: str) -> Path:
        return self.tls_dir / name


# --- files -------------------------------------------------------------------------------------


def write_private(path: Path, data: str | bytes) -> None:
    """Write path atomically with mode 0600 (never readable by others, not even for a moment)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def ensure_material(state_dir: Path, *, formatted: bool) -> Material:
    """Load the state directory's passwords and TLS files, making whatever is missing.

    ``formatted`` says whether any node's storage is already formatted: the SCRAM credentials were
    then written into the metadata log at format time, so new passwords would not match them, and a
    missing credentials file is an error (wipe the state directory to start over) rather than
    silently made anew. TLS files are all made together, from a new CA, when any is missing.
    """
    path = state_dir / CREDENTIALS_FILE
    if path.exists():
        data = json.loads(path.read_text())
        material = Material(state_dir, data[ADMIN_USER], data[SERVICE_USER])
    elif formatted:
        raise KafkaSetupError(
            f"{path} is missing, but the cluster's storage was formatted with SCRAM users whose "
            f"passwords it held. Wipe the state directory (`stream-infer kafka down --wipe "
            f"--state-dir {state_dir}`) and start again."
        )
    else:
        material = Material(state_dir, secrets.token_urlsafe(24), secrets.token_urlsafe(24))
        passwords = {ADMIN_USER: material.admin_password, SERVICE_USER: material.service_password}
        write_private(path, json.dumps(passwords, indent=2))
    if not all(material.tls(name).exists() for name in _TLS_FILES):
        _make_tls(material)
    return material


def _name(common_name: str) -> x509.Name:
    # The common name alone: the subject "CN=svc" is what PRINCIPAL_MAPPING_RULES turns into "svc".
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _leaf(
    common_name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    usages: list[x509.ObjectIdentifier],
    now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf (EC key) signs and agrees keys in TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ca(common_name: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA valid from 5 minutes before `now` for :data:`CA_VALIDITY`, signing
    end-entity certificates only (path length 0)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(common_name)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _make_tls(material: Material) -> None:
    """A new CA, broker and svc certificates, written to a fresh folder that then replaces tls/."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = new_ca("stream-infer local Kafka CA", now)
    # The brokers' certificate serves the listeners and is their client certificate towards the
    # controller and inter-broker listeners, which require one.
    broker_key, broker_cert = _leaf(
        BROKER_CN, ca_key, ca_cert, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], now
    )
    svc_key, svc_cert = _leaf(SERVICE_USER, ca_key, ca_cert, [ExtendedKeyUsageOID.CLIENT_AUTH], now)

    def pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    final = material.tls_dir
    staging = final.with_name(TLS_DIR + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    (staging / CA_CERT).write_bytes(_pem(ca_cert))
    write_private(staging / CA_KEY, pkcs8(ca_key))
    (staging / BROKER_CERT).write_bytes(_pem(broker_cert) + _pem(ca_cert))
    write_private(staging / BROKER_KEY, pkcs8(broker_key))
    (staging / SERVICE_CERT).write_bytes(_pem(svc_cert) + _pem(ca_cert))
    write_private(staging / SERVICE_KEY, pkcs8(svc_key))
    shutil.rmtree(final, ignore_errors=True)
    staging.replace(final)


# --- storage format and broker configuration -----------------------------------------------------


def scram_format_args(material: Material) -> list[str]:
    """`kafka-storage format` arguments that create the SCRAM users (KIP-900), both mechanisms each."""
    args = []
    for mechanism in SCRAM_MECHANISMS:
        for user, password in ((ADMIN_USER, material.admin_password), (SERVICE_USER, material.service_password)):
            args += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    return args


def _property_value(text: str) -> str:
    """text as one Java properties value (java.util.Properties turns `\\n` back into a newline)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def listener_properties(material: Material, *, host: str, client_port: int, mtls_port: int, controller_port: int) -> list[str]:
    """server.properties lines for one secure node: listeners, TLS, SASL and the authorizer.

    CLIENT (SASL_SSL: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN) on client_port; MTLS (SSL, client certificate required) on mtls_port,
    also the inter-broker listener; CONTROLLER (SSL, client certificate required) on controller_port.
    The lines hold the broker's private key: the file they go to must be private (0600).

    The key and its chain are inline (ssl.keystore.key, ssl.keystore.certificate.chain): a PEM
    keystore file (ssl.keystore.location) needs an encrypted key and ssl.key.password, and Kafka
    4.3 on Java 17 cannot decrypt the PBES2 encryption that `cryptography` writes ("PBES2
    SecretKeyFactory not available"); inline, an unencrypted PKCS#8 key is accepted.
    """
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    # PLAIN checks passwords against this list (the passwords are URL-safe base64: no quoting needed).
    plain_jaas = (
        f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{ADMIN_USER}="{material.admin_password}" '
        f'user_{SERVICE_USER}="{material.service_password}";'
    )
    return [
        f"listeners=CLIENT://{host}:{client_port},MTLS://{host}:{mtls_port},CONTROLLER://{host}:{controller_port}",
        f"advertised.listeners=CLIENT://{host}:{client_port},MTLS://{host}:{mtls_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=MTLS",
        "listener.security.protocol.map=CLIENT:SASL_SSL,MTLS:SSL,CONTROLLER:SSL",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.key={_property_value(material.tls(BROKER_KEY).read_text())}",
        f"ssl.keystore.certificate.chain={_property_value(material.tls(BROKER_CERT).read_text())}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={material.tls(CA_CERT)}",
        f"ssl.principal.mapping.rules={PRINCIPAL_MAPPING_RULES}",
        "listener.name.mtls.ssl.client.auth=required",
        "listener.name.controller.ssl.client.auth=required",
        f"sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
        f"listener.name.client.sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
        *(f"listener.name.client.{m.lower()}.sasl.jaas.config={jaas}" for m in SCRAM_MECHANISMS),
        f"listener.name.client.plain.sasl.jaas.config={plain_jaas}",
        f"authorizer.class.name={AUTHORIZER}",
        "allow.everyone.if.no.acl.found=false",
        f"super.users={';'.join(SUPER_USERS)}",
    ]


# --- client settings -----------------------------------------------------------------------------


def _properties_text(title: str, settings: dict[str, str]) -> str:
    lines = [f"# {title}", "# Written by `stream-infer kafka up --secure`; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_client_properties(material: Material, *, bootstrap: str, mtls_bootstrap: str) -> None:
    """Write client.properties, client-scram.properties, admin.properties and
    client-mtls.properties (mode 0600)."""
    ca = str(material.tls(CA_CERT))

    def sasl(mechanism: str, user: str, password: str) -> dict[str, str]:
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": mechanism,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": ca,
        }

    state_dir = material.state_dir
    write_private(
        state_dir / CLIENT_PROPERTIES,
        _properties_text(
            f"Service principal User:{SERVICE_USER} (PLAIN over TLS; {SCRAM_PROPERTIES} has it with {SCRAM_MECHANISM}).",
            sasl("PLAIN", SERVICE_USER, material.service_password),
        ),
    )
    write_private(
        state_dir / SCRAM_PROPERTIES,
        _properties_text(
            f"Service principal User:{SERVICE_USER} ({SCRAM_MECHANISM} over TLS; needs librdkafka 2.6.1 or newer).",
            sasl(SCRAM_MECHANISM, SERVICE_USER, material.service_password),
        ),
    )
    write_private(
        state_dir / ADMIN_PROPERTIES,
        _properties_text(f"Super user User:{ADMIN_USER} (PLAIN over TLS).", sasl("PLAIN", ADMIN_USER, material.admin_password)),
    )
    write_private(
        state_dir / MTLS_PROPERTIES,
        _properties_text(
            f"Service principal User:{SERVICE_USER} by its client certificate (mutual TLS).",
            {
                "bootstrap.servers": mtls_bootstrap,
                "security.protocol": "SSL",
                "ssl.ca.location": ca,
                "ssl.certificate.location": str(material.tls(SERVICE_CERT)),
                "ssl.key.location": str(material.tls(SERVICE_KEY)),
            },
        ),
    )


def admin_settings(state_dir: Path) -> dict[str, str]:
    """librdkafka settings of the super user admin (bootstrap included), from admin.properties.

    Empty when the file is missing (a cluster that never started): callers then get no answer
    from the cluster rather than an exception.
    """
    path = state_dir / ADMIN_PROPERTIES
    return read_properties(path) if path.exists() else {}
