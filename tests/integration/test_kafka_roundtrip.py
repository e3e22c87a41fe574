"""confluent-kafka against the real broker: topics via the admin API, a keyed round trip in order."""

from __future__ import annotations

from collections import defaultdict

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer.kafka.admin import admin_client, create_topics, topic_partitions

N_MESSAGES = 10_000
N_KEYS = 100
N_PARTITIONS = 6


def test_topics_are_created_through_the_admin_api(kafka_bootstrap: str, unique) -> None:
    names = [unique("admin-a"), unique("admin-b")]
    create_topics(kafka_bootstrap, names, partitions=3)
    create_topics(kafka_bootstrap, names, partitions=3)  # second call: already exists, no error
    metadata = admin_client(kafka_bootstrap).list_topics(timeout=10)
    for name in names:
        assert len(metadata.topics[name].partitions) == 3


def test_keyed_round_trip_keeps_per_partition_and_per_key_order(kafka_bootstrap: str, unique) -> None:
    topic = unique("roundtrip")
    create_topics(kafka_bootstrap, [topic], partitions=N_PARTITIONS)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for seq in range(N_MESSAGES):
        key = f"device-{seq % N_KEYS}"
        producer.produce(topic, key=key.encode(), value=orjson.dumps({"key": key, "seq": seq}))
        if seq % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0, "messages still undelivered after 30 s"

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique("rt-group"), "enable.auto.commit": False})
    partitions = topic_partitions(kafka_bootstrap, [topic])
    consumer.assign([TopicPartition(tp.topic, tp.partition, 0) for tp in partitions])
    received: list = []
    while len(received) < N_MESSAGES:
        batch = consumer.consume(num_messages=1000, timeout=5)
        assert batch, f"consumer stalled after {len(received)} of {N_MESSAGES} messages"
        for msg in batch:
            assert msg.error() is None, msg.error()
        received.extend(batch)
    consumer.close()

    assert len(received) == N_MESSAGES
    offsets_by_partition: dict[int, list[int]] = defaultdict(list)
    seqs_by_key: dict[str, list[int]] = defaultdict(list)
    partition_of_key: dict[str, set[int]] = defaultdict(set)
    for msg in received:
        value = orjson.loads(msg.value())
        offsets_by_partition[msg.partition()].append(msg.offset())
        seqs_by_key[value["key"]].append(value["seq"])
        partition_of_key[value["key"]].add(msg.partition())

    assert len(offsets_by_partition) == N_PARTITIONS, "keys did not spread over all partitions"
    for partition, offsets in offsets_by_partition.items():
        assert offsets == list(range(len(offsets))), f"partition {partition} out of order or with gaps"
    for key, seqs in seqs_by_key.items():
        assert seqs == sorted(seqs) and len(seqs) == N_MESSAGES // N_KEYS, f"{key} out of order"
        assert len(partition_of_key[key]) == 1, f"{key} landed in several partitions"
