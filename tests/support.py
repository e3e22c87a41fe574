"""Helpers for end-to-end tests: a demo-shaped config on unique topics, feeding, reading outputs."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer import configs
from stream_infer.config import Config, load_config
from stream_infer.configs import DEMO_CONFIG, demo_config_data, pipeline_table, rename_under  # noqa: F401  (tests import DEMO_CONFIG from here)
from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.connection import KafkaConnection, as_connection
from stream_infer.tools.faults.reference import RecordingProducer  # noqa: F401  (tests import it from here)
from stream_infer.tools.replay import dataset_events, replay

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class E2EConfig:
    path: Path
    config: Config
    prefix: str

    def pipeline(self, name: str):
        return next(p for p in self.config.pipelines if p.name == name)


def write_config(
    tmp_path: Path,
    prefix: str,
    *,
    checkpoint_ms: int = 200,
    kafka: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None,
    pipelines: dict[str, dict[str, Any]] | None = None,
    only: tuple[str, ...] = ("engines", "machines"),
) -> E2EConfig:
    """The demo config with every topic and the group renamed under `prefix`, paths made absolute;
    `kafka` and `worker` set keys of those tables, `pipelines` adds or replaces tables of the named
    pipelines (e.g. {"machines": {"staleness": {...}}}); `only`: the pipelines kept (default the
    two sensor pipelines, which most tests were written for)."""
    data = rename_under(configs.keep_pipelines(demo_config_data(), *only), prefix)
    data["worker"]["checkpoint_interval_ms"] = checkpoint_ms
    data["kafka"].update(kafka or {})
    data["worker"].update(worker or {})
    for name, tables in (pipelines or {}).items():
        pipeline_table(data, name).update(tables)
    path = configs.write_config(data, tmp_path / f"{prefix}.toml")
    return E2EConfig(path, load_config(path), prefix)


def group_committed(bootstrap: KafkaConnection | str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """The group's committed offset per partition, as the broker reports it (negative: none)."""
    reader = Consumer(as_connection(bootstrap).client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        return {tp.partition: tp.offset for tp in reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)}
    finally:
        reader.close()


def create_inputs(bootstrap: KafkaConnection | str, cfg: E2EConfig, partitions: int = 3) -> None:
    create_topics(bootstrap, [p.input_topic for p in cfg.config.pipelines], partitions=partitions)


def feed(
    bootstrap: KafkaConnection | str, topic: str, dataset: str, start: int = 0, stop: int | None = None, extra: list | None = None
) -> int:
    """Replay events [start, stop) of a data set (then `extra` (key, value) pairs) into `topic`;
    returns the count sent."""
    producer = Producer(as_connection(bootstrap).client_config(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5}))
    sent = replay(producer, topic, islice(dataset_events(dataset), start, stop))
    for key, value in extra or []:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    return sent + len(extra or [])


def output_topics(cfg: E2EConfig) -> list[str]:
    return [
        t
        for p in cfg.config.pipelines
        for t in (p.topics.predictions, p.topics.alerts, p.topics.dead_letters, p.topics.review)
        if t
    ]


def close_runner(runner) -> None:
    """Stop a PipelineRunner built by a test (no Faust app): its consumer and lag threads, its pipeline."""
    runner.source.thread.shutdown(wait=True)
    runner.monitor.close()
    runner.close_resources()
