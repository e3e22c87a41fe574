"""Produce: an asyncio face on confluent-kafka's Producer, awaited per batch, not per message.

Contract of :meth:`AsyncProducer.send_batch`: returns an awaitable that resolves once the broker
acknowledged every message of the batch (acks=all), or raises :class:`DeliveryError` with the first
failure. Messages of one key keep their order (idempotent producer: retries cannot reorder).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, Producer

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.kafka.client")

# (topic, key, value, headers or None)
OutMessage = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]


class DeliveryError(RuntimeError):
    """The broker refused or timed out a message; its input offsets must not be committed."""


class _BatchDelivery:
    """Counts delivery reports of one batch (all run on the poll thread) and resolves one future."""

    __slots__ = ("loop", "future", "remaining", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.remaining = count
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(DeliveryError(f"delivery failed: {self.error.str()}"))
        else:
            self.future.set_result(None)


class AsyncProducer:
    def __init__(self, bootstrap: str, extra: dict | None = None) -> None:
        config = {
            "bootstrap.servers": bootstrap,
            "acks": "all",  # no loss: an output counts only once every in-sync replica has it
            "enable.idempotence": True,  # retries can neither duplicate nor reorder within a partition
            "linger.ms": 2,  # a batch's messages leave together; a lone prediction is not held back
            "compression.type": "lz4",
            "logger": _client_log,
        }
        config.update(extra or {})
        self._producer = Producer(config)
        self._stop = threading.Event()
        # Delivery reports are served by this thread, so the event loop never blocks in poll().
        self._poller = threading.Thread(target=self._poll_loop, name="producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send_batch(self, messages: Iterable[OutMessage]) -> asyncio.Future:
        messages = list(messages)
        loop = asyncio.get_running_loop()
        delivery = _BatchDelivery(loop, len(messages))
        if not messages:
            delivery.future.set_result(None)
            return delivery.future
        produce = self._producer.produce
        for topic, key, value, headers in messages:
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers, on_delivery=delivery)
                    break
                except BufferError:
                    # Local queue full: the poll thread is draining it; wait briefly, do not drop.
                    time.sleep(0.005)
        return delivery.future

    def flush(self, timeout: float = 30.0) -> int:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            log.warning("%d output message(s) still undelivered at shutdown; their inputs stay uncommitted", remaining)
        self._stop.set()
        self._poller.join(timeout=2)
