"""Committed offsets and lag read through the admin API equal log-end minus committed."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer.kafka.admin import create_topics, group_lag


def test_lag_is_log_end_minus_committed(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lag"), unique("lag-group")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    produced = {0: 50, 1: 20, 2: 7}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for partition, count in produced.items():
        for i in range(count):
            producer.produce(topic, value=b"x%d" % i, partition=partition)
    assert producer.flush(30) == 0

    committed = {0: 30, 1: 20}  # partition 2: never committed
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in committed.items()], asynchronous=False)
    consumer.close()

    lags = {p.partition: p for p in group_lag(kafka_bootstrap, group, [topic])}
    assert sorted(lags) == [0, 1, 2]
    for partition, count in produced.items():
        assert lags[partition].log_end == count
    assert lags[0].committed == 30 and lags[0].lag == 20
    assert lags[1].committed == 20 and lags[1].lag == 0
    assert lags[2].committed is None and lags[2].lag is None

    # Without a topic list, the partitions the group committed are reported.
    assert {(p.topic, p.partition, p.lag) for p in group_lag(kafka_bootstrap, group)} == {(topic, 0, 20), (topic, 1, 0)}
