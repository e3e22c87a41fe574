"""Connection settings (TLS, SASL) from a properties file, [kafka.client] and the environment:
precedence, secret references, refusal of non-connection keys, and no secret in any output."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import DEMO_CONFIG

from stream_infer import configs
from stream_infer.config import ConfigError, load_config
from stream_infer.configs import demo_config_data
from stream_infer.kafka.connection import (
    ConnectionSettingsError,
    KafkaConnection,
    read_properties,
    resolve,
)

SECRET = "s3cr3t-Pa55-do-not-print"


def _properties(tmp_path: Path, text: str, name: str = "client.properties") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_kcat_properties_file_is_read_with_comments_and_both_separators(tmp_path: Path) -> None:
    path = _properties(
        tmp_path,
        "# comment\n! also a comment\n\nsecurity.protocol = SASL_SSL\nsasl.mechanisms: SCRAM-SHA-512\n"
        f"sasl.username=svc\nsasl.password={SECRET}=tail\nbootstrap.servers=h1:9094,h2:9094\n",
    )
    assert read_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": f"{SECRET}=tail",
        "bootstrap.servers": "h1:9094,h2:9094",
    }


def test_bootstrap_precedence_caller_then_file_then_default(tmp_path: Path) -> None:
    path = _properties(tmp_path, "bootstrap.servers=file:9094\nsecurity.protocol=SSL\n")
    assert resolve(properties_file=path).bootstrap == "file:9094"
    assert resolve(bootstrap="given:1", properties_file=path).bootstrap == "given:1"
    assert resolve().bootstrap == "127.0.0.1:9092"
    connection = resolve(properties_file=path)
    assert connection.client_config(**{"group.id": "g"}) == {
        "bootstrap.servers": "file:9094",
        "security.protocol": "SSL",
        "group.id": "g",
    }


def test_inline_settings_override_the_file_and_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("KAFKA_USER", "svc")
    path = _properties(tmp_path, "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=nobody\n")
    connection = resolve(
        properties_file=path,
        inline={
            "security.protocol": "SASL_SSL",
            "sasl.username": "${env:KAFKA_USER}",
            "sasl.password": f"${{file:{secret_file}}}",
            "ssl.endpoint.identification.algorithm": "https",
        },
    )
    assert connection.settings["security.protocol"] == "SASL_SSL"
    assert connection.settings["sasl.username"] == "svc"
    assert connection.settings["sasl.password"] == SECRET
    assert connection.sasl_mechanism == "PLAIN" and connection.sasl_username == "svc"


@pytest.mark.parametrize(
    "inline, message",
    [
        ({"group.id": "other"}, "'group.id' is not a connection setting"),
        ({"acks": "0"}, "'acks' is not a connection setting"),
        ({"sasl.password": "${env:NOT_SET_ANYWHERE_123}"}, "environment variable NOT_SET_ANYWHERE_123, which is not set"),
        ({"sasl.password": "${file:/nonexistent/secret}"}, "file /nonexistent/secret, which cannot be read"),
    ],
)
def test_bad_settings_are_refused_by_name(inline: dict, message: str) -> None:
    with pytest.raises(ConnectionSettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(inline=inline)


def test_secrets_never_appear_in_repr_str_or_describe(tmp_path: Path) -> None:
    connection = KafkaConnection(
        "h:1",
        {
            "sasl.password": SECRET,
            "ssl.key.password": SECRET,
            "ssl.key.pem": SECRET,
            "sasl.oauthbearer.client.secret": SECRET,
            "sasl.username": "svc",
        },
    )
    for text in (repr(connection), str(connection), str(connection.describe())):
        assert SECRET not in text
    assert connection.describe()["settings"]["sasl.username"] == "svc"
    assert connection.describe()["settings"]["sasl.password"] == "***"


def _demo_with(tmp_path: Path, **kafka: object) -> Path:
    """The demo config (absolute paths) with these keys set in its [kafka] table (not loaded)."""
    data = demo_config_data()
    data["kafka"].update(kafka)
    return configs.write_config(data, tmp_path / "conn.toml")


def test_the_config_names_a_properties_file_relative_to_itself_and_env_and_option_replace_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("STREAM_INFER_KAFKA_PROPERTIES", raising=False)
    _properties(tmp_path, "bootstrap.servers=fromfile:9094\nsecurity.protocol=SSL\n")
    other = _properties(tmp_path, "bootstrap.servers=fromenv:9094\nsecurity.protocol=SASL_SSL\n", "other.properties")
    config_path = _demo_with(tmp_path, properties_file="client.properties")
    # The demo config sets bootstrap_servers explicitly; drop it so the file's is used.
    config_path.write_text(
        "\n".join(line for line in config_path.read_text().splitlines() if not line.startswith("bootstrap_servers"))
    )
    assert load_config(config_path).kafka.connection().bootstrap == "fromfile:9094"
    monkeypatch.setenv("STREAM_INFER_KAFKA_PROPERTIES", str(other))
    assert load_config(config_path).kafka.connection().settings["security.protocol"] == "SASL_SSL"
    assert (
        load_config(config_path, kafka_properties=tmp_path / "client.properties").kafka.connection().bootstrap == "fromfile:9094"
    )
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:1")
    assert load_config(config_path).kafka.connection().bootstrap == "env:1"


def test_a_config_error_in_the_connection_names_the_key_not_the_secret(tmp_path: Path) -> None:
    config_path = _demo_with(tmp_path, client={"sasl.password": SECRET, "fetch.min.bytes": 5})
    with pytest.raises(ConfigError) as err:
        load_config(config_path)
    assert "'fetch.min.bytes' is not a connection setting" in str(err.value)
    assert SECRET not in str(err.value)


def test_the_demo_config_still_loads_without_settings() -> None:
    connection = load_config(DEMO_CONFIG).kafka.connection()
    assert connection.settings == {} and connection.security_protocol == "PLAINTEXT"
