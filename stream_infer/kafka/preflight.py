"""Fast, one-line answers to "why can this client not use the cluster?".

librdkafka retries a failed connection forever and reports the cause only through error
callbacks and logs, so a wrong password or an untrusted certificate looks like a worker that
hangs. :func:`connect` makes one admin connection and turns the first definite failure
(authentication, TLS) into :class:`ConnectionFailure` at once, or, when nothing answers, into
one after `timeout`. :func:`check_access` compares the operations the cluster grants this
principal with those a worker needs (:mod:`stream_infer.kafka.acls`), before any pipeline starts.

Messages name the broker, the mechanism or resource, the cause and the setting to look at;
never a secret (see :mod:`stream_infer.kafka.connection`).
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Collection, Iterable
from enum import Enum

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient, ConsumerGroupDescription

from stream_infer.kafka.acls import Grant
from stream_infer.kafka.connection import KafkaConnection, as_connection

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")
# librdkafka prefixes errors with the broker it was talking to: "sasl_ssl://127.0.0.1:9094/bootstrap: ..."
_BROKER = re.compile(r"^(?:\w+://)?([^/\s]+:\d+)(?:/[\w-]+)?: ")
_CAUSE_CODES = (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED)


class ConnectionFailure(RuntimeError):
    """The cluster cannot be used with these settings; the message is one line saying why.
    `unreachable`: no broker answered at all (rather than refusing the client)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def _broker_of(text: str, fallback: str) -> str:
    match = _BROKER.match(text)
    return match.group(1) if match else fallback


def explain(error: KafkaError, connection: KafkaConnection) -> str:
    """One line for a connection-level error: who could not do what where, and what to check."""
    text = error.str()
    broker = _broker_of(text, connection.bootstrap)
    code = error.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        mechanism = connection.sasl_mechanism
        if mechanism is None:  # mTLS: the broker closed the connection after the handshake
            return (
                f"TLS client authentication failed at {broker}: the broker did not accept the client certificate "
                "(check ssl.certificate.location, ssl.key.location and that the broker trusts its CA)"
            )
        user = connection.sasl_username
        who = f" for user {user!r}" if user else ""
        if "invalid credentials" in text or "Authentication failed" in text:
            cause = "invalid credentials (wrong password or unknown user); check sasl.username and sasl.password"
        elif "mechanism" in text.lower() and "not enabled" in text.lower() or "Unsupported SASL mechanism" in text:
            cause = f"the broker does not enable {mechanism}; set sasl.mechanisms to one it offers"
        else:
            cause = _tail(text)
        return f"SASL authentication failed{who} at {broker} ({mechanism}): {cause}"
    if code == KafkaError._SSL:
        lowered = text.lower()
        host = broker.rsplit(":", 1)[0]
        mismatch = (
            f"TLS handshake with {broker} failed: the broker's certificate does not name {host!r}; "
            "connect by a name in its certificate (its subject alternative names)"
        )
        if "hostname mismatch" in lowered or "does not match" in lowered or "ip address mismatch" in lowered:
            return mismatch
        if "certificate verify failed" in lowered or "unable to get local issuer" in lowered or "self-signed" in lowered:
            # librdkafka says the same for an unknown CA and for a name the certificate lacks.
            if _certificate_names_other_host(broker, connection.settings.get("ssl.ca.location")):
                return mismatch
            return (
                f"TLS handshake with {broker} failed: the broker's certificate is not trusted; set ssl.ca.location "
                "to the CA that signed it"
            )
        if "wrong version number" in lowered or "packet length too long" in lowered or "record layer failure" in lowered:
            return f"TLS handshake with {broker} failed: the listener does not speak TLS; check the port and security.protocol"
        return f"TLS handshake with {broker} failed: {_tail(text)}"
    return text


def _certificate_names_other_host(broker: str, ca_location: str | None) -> bool:
    """Whether the broker's certificate is trusted (by `ca_location`, else the system's CAs) but
    does not name the host it was reached by: a second handshake, by Python's ssl module, once
    without and once with the hostname check. False when that cannot be told."""
    host, _, port = broker.rpartition(":")
    checking_name = False
    try:
        context = ssl.create_default_context(cafile=ca_location) if ca_location else ssl.create_default_context()
        context.check_hostname = False
        with socket.create_connection((host, int(port)), timeout=3) as sock, context.wrap_socket(sock):
            pass  # trusted
        context.check_hostname = checking_name = True
        with socket.create_connection((host, int(port)), timeout=3) as sock, context.wrap_socket(sock, server_hostname=host):
            return False
    except ssl.SSLCertVerificationError as err:
        return checking_name and "mismatch" in str(err).lower()
    except (OSError, ValueError):
        return False


def _tail(text: str) -> str:
    """librdkafka's message without its broker prefix and its "(after N ms in state X)" suffix."""
    text = _BROKER.sub("", text, count=1)
    return re.sub(r"\s*\(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)$", "", text)


def connect(connection: KafkaConnection | str, timeout: float = 10.0) -> AdminClient:
    """An admin client that has completed a metadata request. Raises ConnectionFailure as soon
    as authentication or the TLS handshake fails, or after `timeout` when no broker answers."""
    connection = as_connection(connection)
    causes: list[KafkaError] = []
    lock = threading.Lock()

    def on_error(error: KafkaError) -> None:
        with lock:
            causes.append(error)

    # log_level 0: the failure is reported once, by the exception below, not by librdkafka
    # repeating it at every reconnect.
    try:
        # confluent_kafka types the config's values as str/int/float/bool; callbacks and a logger are valid too.
        admin = AdminClient(connection.client_config(error_cb=on_error, logger=_client_log, log_level=0))  # type: ignore[arg-type]
    except KafkaException as err:  # a setting librdkafka refuses: unknown name, unreadable file
        hint = (
            "; check that each file named by an ssl.*.location setting exists and is PEM"
            if "location" in err.args[0].str()
            else ""
        )
        raise ConnectionFailure(
            f"the Kafka client settings{f' from {connection.source}' if connection.source else ''} "
            f"are not usable: {err.args[0].str()}{hint}"
        ) from None
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return admin
        except KafkaException as err:
            last = err.args[0].str()
        admin.poll(0)  # serves error_cb: librdkafka queues its errors until the client is polled
        with lock:
            definite = next((e for e in causes if e.code() in _CAUSE_CODES), None)
            if causes:
                last = causes[-1].str()
        if definite is not None:
            raise ConnectionFailure(explain(definite, connection))
        if time.monotonic() >= deadline:
            hint = ""
            if connection.security_protocol == "PLAINTEXT":
                hint = "; if the cluster requires TLS or SASL, give its settings with --kafka-properties or [kafka.client]"
            raise ConnectionFailure(
                f"no Kafka broker answered at {connection.bootstrap} within {timeout:g} s "
                f"({connection.security_protocol}; last error: {_tail(last) or 'none'}){hint}",
                unreachable=True,
            )


def check_access(admin: AdminClient, grants: Iterable[Grant], principal_hint: str = "", timeout: float = 10.0) -> None:
    """Raise ConnectionFailure naming the first resource whose needed operations the cluster does
    not grant. Checked: existing topics (a topic the worker will create needs only CREATE,
    which creation itself checks) and the consumer group. Transactional ids cannot be asked
    about; the producer's initialisation reports them. On a cluster without an authorizer every
    check passes.

    Only a refusal is an error: a check the cluster cannot answer now (a coordinator failing
    over, a slow new cluster) is skipped, logged, and left to the clients' own retries, so a
    worker restarted during a fault still starts."""
    try:
        _check_access(admin, grants, principal_hint, timeout)
    except (KafkaException, TimeoutError) as err:
        reason = err.args[0].str() if isinstance(err, KafkaException) else f"no answer within {timeout:g} s"
        log.info("access check skipped: the cluster did not answer it", extra={"reason": reason})


def _check_access(admin: AdminClient, grants: Iterable[Grant], principal_hint: str, timeout: float) -> None:
    who = f" to {principal_hint}" if principal_hint else ""
    grants = list(grants)
    topics = [g for g in grants if g.resource_type == "topic"]
    if topics:
        futures = admin.describe_topics(
            TopicCollection([g.name for g in topics]), request_timeout=timeout, include_authorized_operations=True
        )
        for grant in topics:
            try:
                description = futures[grant.name].result(timeout=timeout)
            except KafkaException as err:
                error = err.args[0]
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # created by the worker (CREATE is checked then)
                if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise ConnectionFailure(
                        f"not authorized to describe topic {grant.name!r}: grant DESCRIBE{who} on it "
                        f"(it needs {', '.join(grant.operations)}; `stream-infer acls` lists every ACL the worker needs)"
                    ) from None
                raise
            _require(grant, description.authorized_operations, who)
    for grant in (g for g in grants if g.resource_type == "group"):
        try:
            description = _describe_group(admin, grant.name, timeout)
        except KafkaException as err:
            error = err.args[0]
            if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                raise ConnectionFailure(
                    f"not authorized to use consumer group {grant.name!r}: grant {', '.join(grant.operations)}{who} on it "
                    "(`stream-infer acls` lists every ACL the worker needs)"
                ) from None
            raise
        _require(grant, description.authorized_operations, who)


# Answers that mean "ask again": the group's coordinator is being found or loaded (the first
# group on a new cluster also creates the offsets topic).
_COORDINATOR_MOVING = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError._TIMED_OUT,
)


def _describe_group(admin: AdminClient, group: str, timeout: float) -> ConsumerGroupDescription:
    deadline = time.monotonic() + timeout
    while True:
        future = admin.describe_consumer_groups([group], request_timeout=timeout, include_authorized_operations=True)[group]
        try:
            return future.result(timeout=timeout)
        except KafkaException as err:
            if err.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _require(grant: Grant, authorized: Collection[Enum] | None, who: str) -> None:
    """`authorized`: AclOperation members (confluent_kafka types them as plain Enum)."""
    if not authorized:  # not reported: no authorizer, or a broker too old to say
        return
    have = set(authorized)
    if AclOperation.ALL in have:
        return
    # DESCRIBE is implied by READ, WRITE, DELETE and ALTER (Kafka's implication rules).
    if have & {AclOperation.READ, AclOperation.WRITE, AclOperation.DELETE, AclOperation.ALTER}:
        have.add(AclOperation.DESCRIBE)
    missing = [op for op in grant.operations if op != "CREATE" and AclOperation[op] not in have]
    if missing:
        kind = "topic" if grant.resource_type == "topic" else "consumer group"
        raise ConnectionFailure(
            f"not authorized to {'/'.join(op.lower() for op in missing)} {kind} {grant.name!r}: grant "
            f"{', '.join(missing)}{who} on it (`stream-infer acls` lists every ACL the worker needs)"
        )
