"""How every Kafka client of the project connects: the bootstrap servers and the connection's
librdkafka settings (security protocol, SASL, TLS), from one place.

The settings come from, lowest precedence first:

1. a librdkafka properties file (the `key=value` format `kcat -F` reads), named by
   `kafka.properties_file` in the config, replaced by ``$STREAM_INFER_KAFKA_PROPERTIES``, replaced
   by `--kafka-properties FILE` on the command line;
2. the same keys inline under `[kafka.client]` in the config.

The bootstrap servers: the one the caller names (`--bootstrap-servers`, else
``$KAFKA_BOOTSTRAP_SERVERS``, else `kafka.bootstrap_servers` when the config sets it), else the
properties file's `bootstrap.servers`, else 127.0.0.1:9092.

Any value may be a reference instead of the secret itself, so that a Kubernetes Secret can be
mounted as an environment variable or a file: ``${env:NAME}`` (the variable's value) or
``${file:PATH}`` (the file's content without its trailing newline). Only connection settings are
accepted (see :data:`ALLOWED_PREFIXES`): the worker sets group, offset and transaction settings
per client itself.

Contract on secrets: a :class:`KafkaConnection`'s ``repr``/``str`` and :meth:`describe` never
contain a secret value (see :func:`is_secret`), and no error raised here quotes one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
PROPERTIES_ENV = "STREAM_INFER_KAFKA_PROPERTIES"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

# Connection-level librdkafka settings. Group, offset, producer and transaction settings are the
# worker's own (it sets them per client for its guarantees), so they are refused here.
ALLOWED_PREFIXES = (
    "security.protocol",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl.certificate.verification",
    "https.",
    "enable.sasl.oauthbearer.unsecure.jwt",
    "socket.",
    "broker.address.",
    "client.dns.lookup",
    "client.id",
    "client.rack",
    "connections.max.idle.ms",
    "reconnect.backoff.",
    "retry.backoff.",
    "metadata.max.age.ms",
    "topic.metadata.",
    "api.version.",
    "broker.version.fallback",
    "allow.auto.create.topics",
)
_SECRET_WORDS = ("password", "secret", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "keytab")
_REFERENCE = re.compile(r"^\$\{(env|file):(.+)\}$")
REDACTED = "***"


class ConnectionSettingsError(ValueError):
    """The connection settings cannot be used; the message names the source and key, never a secret."""


def is_secret(key: str) -> bool:
    """Whether a librdkafka setting holds a secret (its value is never shown)."""
    key = key.lower()
    return any(word in key for word in _SECRET_WORDS)


def read_properties(path: str | Path) -> dict[str, str]:
    """A librdkafka properties file as a dict: `key=value` lines (or `key: value`), blank lines
    and lines starting with `#` or `!` ignored, whitespace around key and value stripped."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConnectionSettingsError(f"Kafka properties file {path} does not exist") from None
    except OSError as err:
        raise ConnectionSettingsError(f"cannot read Kafka properties file {path}: {err.strerror}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ConnectionSettingsError(f"{path}, line {number}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _resolve_value(source: str, key: str, value: str) -> str:
    match = _REFERENCE.match(value)
    if not match:
        return value
    kind, name = match.groups()
    if kind == "env":
        resolved = os.environ.get(name)
        if resolved is None:
            raise ConnectionSettingsError(f"{source}: {key} refers to environment variable {name}, which is not set")
        return resolved
    try:
        return Path(name).read_text().rstrip("\r\n")
    except OSError as err:
        raise ConnectionSettingsError(f"{source}: {key} refers to file {name}, which cannot be read ({err.strerror})") from None


def _checked(source: str, settings: Mapping[str, object]) -> dict[str, str]:
    out = {}
    for key, value in settings.items():
        if key == "bootstrap.servers":
            continue
        if not key.startswith(ALLOWED_PREFIXES):
            raise ConnectionSettingsError(
                f"{source}: {key!r} is not a connection setting; only security, SASL, TLS and socket settings "
                f"({', '.join(p.rstrip('.') for p in ALLOWED_PREFIXES[:6])}, ...) belong here: the worker sets the others per client"
            )
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (str, int)):
            text = str(value)
        else:
            raise ConnectionSettingsError(f"{source}: {key} must be a string, number or boolean")
        out[key] = _resolve_value(source, key, text)
    return out


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers plus connection settings; :meth:`client_config` builds each client's
    librdkafka configuration from them. ``str()`` is the bootstrap list (for messages)."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    settings: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # where the settings came from, for messages (file names, never values)

    def client_config(self, **extra: object) -> dict[str, object]:
        """`bootstrap.servers`, the connection settings, then `extra` (the client's own settings;
        librdkafka names with dots are passed as a dict: ``client_config(**{"group.id": g})``)."""
        return {"bootstrap.servers": self.bootstrap, **self.settings, **extra}

    @property
    def security_protocol(self) -> str:
        return self.settings.get("security.protocol", "plaintext").upper()

    @property
    def sasl_mechanism(self) -> str | None:
        if "SASL" not in self.security_protocol:
            return None
        return (self.settings.get("sasl.mechanisms") or self.settings.get("sasl.mechanism") or "GSSAPI").upper()

    @property
    def sasl_username(self) -> str | None:
        return self.settings.get("sasl.username") if self.sasl_mechanism else None

    def describe(self) -> dict[str, object]:
        """The connection for humans and `--check` output: secrets replaced by ``***``."""
        settings = {k: (REDACTED if is_secret(k) else v) for k, v in sorted(self.settings.items())}
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "settings": settings,
            "source": self.source or "defaults",
        }

    def __str__(self) -> str:
        return self.bootstrap

    def __repr__(self) -> str:
        shown = {k: (REDACTED if is_secret(k) else v) for k, v in self.settings.items()}
        return f"KafkaConnection(bootstrap={self.bootstrap!r}, settings={shown!r})"


def resolve(
    *,
    bootstrap: str | None = None,
    properties_file: str | Path | None = None,
    inline: Mapping[str, object] | None = None,
) -> KafkaConnection:
    """The connection from its sources: `bootstrap`, the broker list the caller was given if any;
    `properties_file`, the properties file in effect (the caller applies `--kafka-properties` and
    ``$STREAM_INFER_KAFKA_PROPERTIES``); `inline`, `[kafka.client]`, which overrides the file's
    keys. Raises ConnectionSettingsError."""
    raw = read_properties(properties_file) if properties_file else {}
    settings = _checked(str(properties_file), raw) if properties_file else {}
    sources = [str(properties_file)] if properties_file else []
    if inline:
        settings.update(_checked("[kafka.client]", inline))
        sources.append("[kafka.client]")
    servers = bootstrap or raw.get("bootstrap.servers") or DEFAULT_BOOTSTRAP
    return KafkaConnection(bootstrap=servers, settings=settings, source=" + ".join(sources))


def as_connection(connection: KafkaConnection | str) -> KafkaConnection:
    """A connection as given, or a bare bootstrap list read as a PLAINTEXT connection (how the
    development tools and tests name the local clusters they start)."""
    return connection if isinstance(connection, KafkaConnection) else KafkaConnection(bootstrap=connection)
