"""Produce: an asyncio face on confluent-kafka's Producer, with batch-level acknowledgement.

Contract: :meth:`AsyncProducer.send_batch` queues a batch's messages (in order; the idempotent
producer keeps per-partition order across retries) and returns at once. :meth:`wait_acknowledged`
returns once the broker acknowledged (acks=all) every message queued so far, or raises
:class:`DeliveryError` if any failed. Why not a future per message or per batch: a Python
delivery callback per message runs on the poll thread and contends for the GIL with the batch
path; profiling showed it cost more than inference. Only failures call back
(`delivery.report.only.error`), and acknowledgement is established by draining the queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import KafkaError, KafkaException, Producer

from stream_infer.kafka.connection import KafkaConnection, as_connection

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

# (topic, key, value, headers or None)
OutMessage = tuple[str, bytes | None, bytes, list[tuple[str, bytes | None]] | None]


class DeliveryError(RuntimeError):
    """The broker refused or timed out a message; its input offsets must not be committed."""


# What the caller does with a message the producer refused for a property of its own: given the
# message's index in the batch, the refused message and the error, return a replacement to
# produce in its place, or None to skip it.
OnRejected = Callable[[int, OutMessage, str], "OutMessage | None"]

# Errors produce() raises for one message (its size, its contents), never for the client's state:
# a restart cannot fix them, so they must not stop the batch.
_MESSAGE_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._INVALID_ARG, KafkaError.INVALID_RECORD, KafkaError._BAD_MSG}
)


def produce_all(producer: Producer, messages: Sequence[OutMessage], on_rejected: OnRejected | None = None) -> int:
    """Queue messages in order on a confluent-kafka producer; returns how many. When the local
    queue is full, waits for librdkafka to send (never drops). A message refused for a property
    of its own goes to `on_rejected` (without one, the KafkaException propagates); any other
    refusal (fenced, a transaction's state) propagates as KafkaException."""
    produce = producer.produce
    count = 0
    for index, message in enumerate(messages):
        current: OutMessage | None = message
        while current is not None:
            topic, key, value, headers = current
            try:
                # Positional arguments, headers only when there are any: keyword parsing cost
                # about 0.9 us a message, and most messages are headerless predictions.
                if headers is None:
                    produce(topic, value, key)
                else:
                    # confluent_kafka types headers as an invariant List of (str, str | bytes | None).
                    produce(topic, value, key, headers=headers)  # type: ignore[arg-type]
            except BufferError:
                time.sleep(0.005)
            except KafkaException as exc:
                err = exc.args[0]
                if on_rejected is None or err.code() not in _MESSAGE_ERRORS:
                    raise
                current = on_rejected(index, current, err.str())
            else:
                count += 1
                current = None
    return count


class AsyncProducer:
    def __init__(self, bootstrap: KafkaConnection | str, extra: dict | None = None) -> None:
        config = {
            **as_connection(bootstrap).client_config(),
            "acks": "all",  # no loss: an output counts only once every in-sync replica has it
            "enable.idempotence": True,  # retries can neither duplicate nor reorder within a partition
            "linger.ms": 2,  # a batch's messages leave together; a lone prediction is not held back
            "compression.type": "lz4",
            "delivery.report.only.error": True,
            "on_delivery": self._on_failure,
            "logger": _client_log,
        }
        config.update(extra or {})
        self._producer = Producer(config)
        self._failures: list[str] = []
        self._stop = threading.Event()
        # Serves (failure) delivery reports and librdkafka's events, so the event loop never polls.
        self._poller = threading.Thread(target=self._poll_loop, name="producer-poll", daemon=True)
        self._poller.start()
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="producer-flush")

    def _on_failure(self, err: KafkaError | None, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def send_batch(self, messages: Sequence[OutMessage], on_rejected: OnRejected | None = None) -> int:
        """Queue messages in order; returns how many. Blocks briefly only if the local queue is
        full. A message refused for a property of its own goes to `on_rejected` (see produce_all)."""
        return produce_all(self._producer, messages, on_rejected)

    async def wait_acknowledged(self, timeout: float = 120.0) -> None:
        """Wait until every message queued so far is acknowledged; DeliveryError if one failed."""
        remaining = await asyncio.get_running_loop().run_in_executor(self._flusher, self._drain, timeout)
        self._raise_failures()
        if remaining:
            raise DeliveryError(f"{remaining} output message(s) not acknowledged within {timeout:.0f} s")

    def idle(self) -> bool:
        """True when every message queued so far is acknowledged (nothing queued or in flight);
        raises DeliveryError if one failed. Never blocks: the checkpoint polls it to find a
        moment when it can cut without stopping the batch path (see stream_infer.runtime.checkpointing.Checkpointing._cut)."""
        if len(self._producer):
            return False
        self._raise_failures()
        return True

    def _raise_failures(self) -> None:
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            raise DeliveryError(f"{count} output message(s) not delivered, first: {first}")

    def _drain(self, timeout: float) -> int:
        """Wait until nothing is queued or in flight; returns how many still are.

        Not Producer.flush(): with delivery.report.only.error no event marks a success, and
        flush() then re-checks only every 10 ms; the checkpoint waits here while the batch path
        stands still, so that granularity showed up in p99 latency. len(producer) counts queued,
        in-flight and unserved delivery reports (the poll thread serves failures as they come).
        """
        deadline = time.monotonic() + timeout
        while (remaining := len(self._producer)) and time.monotonic() < deadline:
            time.sleep(0.0005)
        return remaining

    def close(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            log.warning("%d output message(s) still undelivered at shutdown; their inputs stay uncommitted", remaining)
        self._stop.set()
        self._poller.join(timeout=2)
        self._flusher.shutdown(wait=False)
