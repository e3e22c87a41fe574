"""BatchConsumer on a real broker: committed offsets known locally, ownership epochs, and one
thread per consumer.

confluent-kafka serializes calls on a Consumer: a call from a second thread waits for the
consume() in progress. The worker therefore makes every consumer call on the consumer thread, and
lag reads the offsets the checkpoint committer committed instead of asking the broker again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from support import close_runner, group_committed

from stream_infer.config import load_config
from stream_infer.kafka.admin import create_topics
from stream_infer.kafka.consumer import BatchConsumer, Ownership
from stream_infer.kafka.transactions import TransactionalProducer
from stream_infer.runtime.runner import PipelineRunner
from stream_infer.stages.pipeline import Pipeline
from stream_infer.state.checkpoint import Checkpoint, CheckpointCommitter
from stream_infer.tools.bench.harness import engines_config


def test_lag_snapshot_reports_the_commits_the_broker_confirmed(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("bc"), unique("bc-group")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for partition in range(3):
        for i in range(10):
            producer.produce(topic, value=b"v%d" % i, partition=partition)
    assert producer.flush(30) == 0

    assigned: dict[int, int] = {}
    consumer = BatchConsumer(
        kafka_bootstrap, group, topic, on_assign=assigned.update, on_revoke=lambda parts: None, on_lost=lambda parts: None
    )
    producer_tx = TransactionalProducer(kafka_bootstrap, unique("bc-tx"), transaction_timeout_ms=10_000)
    committer = CheckpointCommitter(
        "bc", topic, None, producer_tx, consumer.ownership, consumer.note_committed, retain_on_abort=True
    )
    try:
        got = []
        for _ in range(200):
            got += consumer.next_batch(100)
            if len(got) >= 30:
                break
        assert len(got) == 30 and sorted(assigned) == [0, 1, 2]
        # Every assignment of a partition has its own epoch, and the ownership view says so.
        assert consumer.ownership().epochs == assigned and len(set(assigned.values())) == 3

        before = {o.partition: o for o in consumer.lag_snapshot([0, 1, 2])}
        assert all(o.committed is None and o.log_end == 10 and o.lag == 10 and o.position == 10 for o in before.values())

        # Committed in a checkpoint transaction (on this thread here; the worker's committer
        # thread in production), then known to the consumer without asking the broker.
        committer.add(Checkpoint({0: 4, 1: 10}, {}, {0: assigned[0], 1: assigned[1]}))
        assert committer.commit_now().offsets == {0: 4, 1: 10}
        after = {o.partition: o for o in consumer.lag_snapshot([0, 1, 2])}
        assert (after[0].committed, after[0].lag) == (4, 6)
        assert (after[1].committed, after[1].lag) == (10, 0)
        assert (after[2].committed, after[2].lag) == (None, 10)
        broker = group_committed(kafka_bootstrap, group, topic, [0, 1, 2])
        assert broker[0] == 4 and broker[1] == 10 and broker[2] < 0

        # A checkpoint cut under an epoch that is no longer current commits nothing.
        committer.add(Checkpoint({2: 10}, {}, {2: assigned[2] + 1000}))
        assert committer.commit_now().offsets == {}
        assert group_committed(kafka_bootstrap, group, topic, [2])[2] < 0
    finally:
        committer.close()
        consumer.close()


def test_a_lone_event_is_handed_over_at_once_a_stream_is_coalesced(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("co"), unique("co-group")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "linger.ms": 0})
    consumer = BatchConsumer(
        kafka_bootstrap, group, topic, on_assign=lambda parts: None, on_revoke=lambda parts: None, on_lost=lambda parts: None
    )
    try:
        for _ in range(100):  # join the group and reach the (empty) end
            if consumer.next_batch(10, poll_timeout=0.1) == [] and consumer.lag_snapshot([0])[0].log_end == 0:
                break
        producer.produce(topic, value=b"lone")
        producer.flush(10)
        lone = []
        for _ in range(50):
            started = time.monotonic()
            lone = consumer.next_batch(100, coalesce=5.0, max_wait=5.0, poll_timeout=0.2)
            if lone:
                break
        # A 5 s coalesce window, yet the lone event came back alone, without waiting for it.
        assert [m.value() for m in lone] == [b"lone"] and time.monotonic() - started < 2.5

        # Two already waiting, and more arriving while the batch is open: they join it.
        for i in range(2):
            producer.produce(topic, value=b"a%d" % i)
        producer.flush(10)

        def later() -> None:
            time.sleep(0.3)
            for i in range(3):
                producer.produce(topic, value=b"b%d" % i)
            producer.flush(10)

        sender = threading.Thread(target=later)
        sender.start()
        time.sleep(0.1)
        batch = consumer.next_batch(5, coalesce=3.0, max_wait=3.0)
        sender.join()
        assert [m.value() for m in batch] == [b"a0", b"a1", b"b0", b"b1", b"b2"]
    finally:
        consumer.close()


class _RecordingConsumer:
    """Stands in for BatchConsumer to record which thread each call runs on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def _record(self, name: str) -> None:
        self.calls.append((name, threading.current_thread().name))

    def lag_snapshot(self, partitions: list[int]):
        self._record("lag_snapshot")
        return []

    def rewind(self) -> dict[int, int]:
        self._record("rewind")
        return {}

    def ownership(self) -> Ownership:  # any thread, by contract: not recorded
        return Ownership(None, {})


def test_worker_calls_the_consumer_only_from_its_thread(tmp_path: Path) -> None:
    config = load_config(engines_config(tmp_path / "c.toml", group="g", input_topic="in", output_prefix="out"))
    pipeline = Pipeline(config.pipelines[0], producer=None, changelog=None)
    runner = PipelineRunner(pipeline, config, config.kafka.connection())
    recording = runner.source.consumer = _RecordingConsumer()  # type: ignore[assignment]
    pipeline.partitions.owned = {0: 1}

    async def exercise() -> None:
        runner.source.loop = asyncio.get_running_loop()
        await runner.monitor.sample()
        runner.checkpointing._start_rewind()
        deadline = time.monotonic() + 10
        while runner.checkpointing.rewinding and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not runner.checkpointing.rewinding, "the rewind did not finish"

    try:
        asyncio.run(exercise())
    finally:
        close_runner(runner)
    assert [name for name, _ in recording.calls] == ["lag_snapshot", "rewind"]
    assert all(thread.startswith("consume-engines") for _, thread in recording.calls), recording.calls
