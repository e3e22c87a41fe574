"""Apache Kafka's jars, resolved from Maven Central by Maven and cached per user.

Contract: :func:`ensure_jars` returns a directory holding every jar the broker and its tools need.
The first call runs Maven (network); later calls find the completed cache and touch no network.
A cache is only used once marked complete, so an interrupted download is redone, never half-used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

_COMPLETE_MARKER = ".complete"


class KafkaSetupError(RuntimeError):
    """A local Kafka cannot be set up; the message says what to install or change."""


def pom_text() -> str:
    """The pom.xml shipped with the package that pins the Kafka version."""
    return resources.files("stream_infer.tools.devkafka").joinpath("pom.xml").read_text()


def kafka_version() -> str:
    """The Apache Kafka version the pom pins (for logs and status output)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom_text())
    if not match:  # a broken pom is a packaging bug, not a user error
        raise KafkaSetupError("pom.xml has no <kafka.version>; the package is damaged, reinstall it")
    return match.group(1)


def cache_root() -> Path:
    """Where downloaded jars live: $STREAM_INFER_CACHE_DIR, else $XDG_CACHE_HOME/stream-infer."""
    if env := os.environ.get("STREAM_INFER_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stream-infer"


def jars_dir() -> Path:
    """The cache folder for this exact pom: a changed pom gets a fresh folder, never a mixed one."""
    digest = hashlib.sha256(pom_text().encode()).hexdigest()[:10]
    return cache_root() / f"kafka-{kafka_version()}-{digest}" / "jars"


def jars_present() -> bool:
    return (jars_dir() / _COMPLETE_MARKER).exists()


def ensure_jars(*, quiet: bool = False) -> Path:
    """Return the jar folder, downloading with Maven first if the cache is not complete."""
    target = jars_dir()
    if (target / _COMPLETE_MARKER).exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(
            "Maven (mvn) is not installed, and the Kafka jars are not cached yet. "
            "Install Maven (Debian: apt-get install maven) or point KAFKA_BOOTSTRAP_SERVERS at a cluster."
        )
    if not quiet:
        log.warning("fetching Apache Kafka %s jars with Maven into %s (first run only)", kafka_version(), target)
    # Download into a sibling temp folder and rename: a crash mid-download leaves no half cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="download-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "pom.xml").write_text(pom_text())
        out_dir = tmp_path / "jars"
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(tmp_path / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out_dir}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(out_dir.glob("kafka_2.13-*.jar")):
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise KafkaSetupError(
                "Maven could not download the Kafka jars from Maven Central "
                f"(exit {proc.returncode}). Check network access to Maven Central and "
                f"~/.m2/settings.xml proxies, then retry.\n{tail}"
            )
        (out_dir / _COMPLETE_MARKER).write_text(kafka_version())
        if target.exists():  # a concurrent fetch won the race; keep theirs
            return target
        out_dir.rename(target)
    return target


def java_command() -> str:
    """The `java` to run, checked to be version 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaSetupError(
            "Java is not installed: Apache Kafka 4 needs Java 17 or newer. "
            "Install it (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
        )
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise KafkaSetupError(f"could not read the version of {java}: {proc.stderr.strip()[:200]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 17:
        raise KafkaSetupError(
            f"Java {major} found at {java}, but Apache Kafka 4 needs Java 17 or newer. "
            "Install a newer JDK or point JAVA_HOME at one."
        )
    return java
