"""faust-streaming (through aiokafka) consumes and produces on this broker version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer.kafka.admin import create_topics, group_lag

APP = Path(__file__).parent / "apps" / "faust_relay.py"
N = 500


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out.extend(m for m in consumer.consume(500, timeout=1) if m.error() is None)
    consumer.close()
    return out


def test_faust_app_relays_between_topics(kafka_bootstrap: str, unique, tmp_path: Path) -> None:
    src, dst, app_id = unique("faust-src"), unique("faust-dst"), unique("faust-app")
    create_topics(kafka_bootstrap, [src, dst], partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for i in range(N):
        producer.produce(src, key=b"k%d" % (i % 7), value=b"event-%d" % i)
    assert producer.flush(30) == 0

    env = dict(os.environ, BOOTSTRAP=kafka_bootstrap, SRC=src, DST=dst, APP_ID=app_id, DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, str(APP), "worker", "-l", "warn"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        relayed = _read_all(kafka_bootstrap, dst, 2, N, timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")

    assert len(relayed) == N, f"faust relayed {len(relayed)} of {N}; worker output:\n{output[-3000:]}"
    assert sorted(m.value() for m in relayed) == sorted(b"EVENT-%d" % i for i in range(N))
    # Faust commits what it processed; after a clean stop nothing is left behind.
    lags = group_lag(kafka_bootstrap, app_id, [src])
    assert sum(p.committed or 0 for p in lags) == N
    assert all(p.lag == 0 for p in lags)
