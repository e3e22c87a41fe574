"""The benchmark's yardstick: a minimal consume-predict-produce loop with no framework.

One thread, no asyncio, no Faust: confluent-kafka `consume(num_messages=...)`, the pipeline's own
decode/featurize/post-process code and the same ONNX Runtime session, produce, and every
`commit_interval` a flush (all outputs acknowledged) then an offset commit. What one Python
process can do here; the service is held to a fraction of it.

Run: `python -m stream_infer.tools.bench.ceiling -c CONFIG --pipeline engines --group G [--seconds S]`.
Stops after `--seconds`, or after `--idle` seconds without a message.
"""

from __future__ import annotations

import argparse
import logging
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer.config import load_config
from stream_infer.kafka.consumer import records_from_messages
from stream_infer.stages.pipeline import Pipeline

_client_log = logging.getLogger("stream_infer.kafka.client")


def run(config_path: str, pipeline_name: str, group: str, *, seconds: float, idle: float, commit_interval: float = 0.5) -> int:
    config = load_config(config_path)
    pc = next(p for p in config.pipelines if p.name == pipeline_name)
    pipeline = Pipeline(pc, producer=None, changelog=None)
    bootstrap = config.kafka.bootstrap_servers
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
            "logger": _client_log,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "compression.type": "lz4",
            "logger": _client_log,
        }
    )
    consumer.subscribe([pc.input_topic])
    processed, offsets = 0, {}
    started = last_message = last_commit = time.monotonic()
    while time.monotonic() - started < seconds:
        messages = consumer.consume(pc.batching.max_batch_size, timeout=0.1)
        now = time.monotonic()
        if not messages:
            if now - last_message > idle:
                break
            continue
        last_message = now
        records = records_from_messages([m for m in messages if m.error() is None])
        pipeline.partitions.loaded.update(r.partition for r in records)
        batch = pipeline.prepare(records)
        raw = pipeline.engine.run(batch.matrix) if batch.matrix is not None else None
        outputs, _, _ = pipeline.finish(batch, raw, None, now)
        for topic, key, value, headers in outputs:
            # confluent_kafka types headers as an invariant List of (str, str | bytes | None).
            producer.produce(topic, value=value, key=key, headers=headers)  # type: ignore[arg-type]
        producer.poll(0)
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
        processed += len(records)
        if now - last_commit >= commit_interval:
            producer.flush()  # outputs acknowledged before their inputs are committed
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True)
            last_commit = now
    producer.flush()
    if offsets:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    consumer.close()
    pipeline.close()
    return processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--pipeline", default="engines")
    parser.add_argument("--group", required=True)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    print(run(args.config, args.pipeline, args.group, seconds=args.seconds, idle=args.idle))


if __name__ == "__main__":
    main()
