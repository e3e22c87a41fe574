"""The two background threads of a trial: the paced feeder and the prediction watcher.

Feeder contract: produces the looped event stream at `rate` events/s for `duration` seconds
(against a schedule, so a slow moment is caught up, not lost), idempotent with acks=all, and
records for every input the broker acknowledged its (partition, offset) -> stream index. An input
the broker did not acknowledge within the delivery timeout is counted in `failed` and is not an
input of the trial (it may or may not be in the topic; the trial cannot tell).

Watcher contract: reads the predictions topic, and the alerts topic when one is given, from the
beginning with read_committed (what an exactly-once consumer sees; one consumer for both) and
records one :class:`Observation` per prediction and one :class:`AlertObservation` per alert,
stamped with its arrival time.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from confluent_kafka import KafkaError, Message, Producer

from stream_infer.records import InputRecord
from stream_infer.tools.faults.reference import EventStream
from stream_infer.tools.faults.report import AlertObservation, Observation, Sighting, Source
from stream_infer.tools.reader import TopicReader

log = logging.getLogger(__name__)
_client_log = logging.getLogger("stream_infer.tools.faults.client")

# Produce in steps of this many seconds: a sleep per event would cost the feeder more CPU than the
# worker it feeds (at 1,500 events/s about 8 events a step).
STEP_S = 0.005
# Long enough to ride out a broker's death and the election of new leaders (seconds there).
DELIVERY_TIMEOUT_MS = 120_000


class Feeder:
    def __init__(self, bootstrap: str, topic: str, stream: EventStream, *, rate: float, duration: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.stream = stream
        self.rate = rate
        self.duration = duration
        self.delivered: dict[Source, int] = {}  # (partition, offset) -> stream index; filled on the feeder thread
        self.acknowledged: list[Sighting] = []  # (partition, producer timestamp ms, wall-clock second of the ack)
        self.failed = 0
        self.last_error: str | None = None
        self.sent = 0
        self.started_at: float | None = None  # wall clock, set when the first event is due
        self.error: BaseException | None = None  # why the feeder thread ended early, if it did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()
        while self.started_at is None and self._thread.is_alive():
            time.sleep(0.001)

    def stop(self) -> None:
        """End the stream early (the events already produced are still flushed)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the stream to end and every event to be acknowledged; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _delivered(self, index: int, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None, "an acknowledged message has its partition and offset"
            self.delivered[(partition, offset)] = index
            self.acknowledged.append((partition, msg.timestamp()[1], time.time()))
        else:
            self.failed += 1
            self.last_error = err.str()

    def _run(self) -> None:
        try:
            self._feed()
        except BaseException as err:  # the trial reads .error after join()
            log.exception("feeder failed")
            self.error = err

    def _feed(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
                "logger": _client_log,
            }
        )
        total = int(self.rate * self.duration)
        started = time.monotonic()
        self.started_at = time.time()
        while self.sent < total and not self._stop.is_set():
            due = min(total, int((time.monotonic() - started) * self.rate) + 1)
            for index in range(self.sent, due):
                key, value = self.stream.event(index)
                callback = functools.partial(self._delivered, index)
                while True:
                    try:
                        producer.produce(self.topic, key=key, value=value, on_delivery=callback)
                        break
                    except BufferError:  # the local queue is full (a broker is away): wait, never drop
                        producer.poll(0.05)
                self.sent = index + 1
            producer.poll(0)
            time.sleep(STEP_S)
        remaining = producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 10)
        if remaining:
            self.failed += remaining
            self.last_error = f"{remaining} event(s) still queued after the delivery timeout"


def alert_observation(body: dict, arrived: float) -> AlertObservation:
    """An alert record's JSON as the accounting sees it: the source of the last of its `inputs`
    (the run lists them in order, so the last raised it) and its `score`. An alert without inputs
    names no event, (-1, -1), which the accounting counts as unexpected."""
    last = body["inputs"][-1] if body.get("inputs") else {"partition": -1, "offset": -1}
    return AlertObservation(last["partition"], last["offset"], body["score"], arrived)


class PredictionWatcher:
    """Reads the predictions topic (and `alerts_topic`, if given) on a thread; `observations` and
    `alerts` grow as predictions and alerts arrive. `last_arrival` is the latest of either."""

    def __init__(self, bootstrap: str, topic: str, score_name: str, alerts_topic: str | None = None) -> None:
        self.topic = topic
        self.alerts_topic = alerts_topic
        self.score_name = score_name
        self.observations: list[Observation] = []
        self.alerts: list[AlertObservation] = []
        self._seen: set[Source] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = TopicReader(bootstrap, [topic] if alerts_topic is None else [topic, alerts_topic])
        self._thread = threading.Thread(target=self._run, name="faults-watcher", daemon=True)
        self.last_arrival = time.time()

    def start(self) -> None:
        self._thread.start()

    def _record(self, record: InputRecord) -> None:
        body = record.json()
        if record.topic != self.topic:
            self._record_alert(body)
            return
        source = body["source"]
        obs = Observation(
            source["partition"], source["offset"], body["outputs"][self.score_name], time.time(), source["timestamp_ms"]
        )
        with self._lock:
            self.observations.append(obs)
            self._seen.add((obs.partition, obs.offset))
            self.last_arrival = obs.arrived

    def _record_alert(self, body: dict) -> None:
        alert = alert_observation(body, time.time())
        with self._lock:
            self.alerts.append(alert)
            self.last_arrival = alert.arrived

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._reader.poll(0.2, self._record)
                # The reader keeps every record too; the observations are all a trial needs.
                for records in self._reader.records.values():
                    records.clear()
        finally:
            self._reader.close()

    def missing(self, inputs: set[Source]) -> int:
        """How many of `inputs` have no prediction yet."""
        with self._lock:
            return len(inputs - self._seen)

    def wait_drained(self, inputs: set[Source], timeout: float, settle: float) -> None:
        """Until every one of `inputs` has a prediction or `timeout` passes; then until nothing has
        arrived for `settle` seconds (late duplicates of a replay arrive in that window), at most
        5 x `settle`."""
        deadline = time.monotonic() + timeout
        while self.missing(inputs) and time.monotonic() < deadline:
            time.sleep(0.5)
        settle_deadline = time.monotonic() + 5 * settle
        while time.time() - self.last_arrival < settle and time.monotonic() < settle_deadline:
            time.sleep(0.2)

    def snapshot(self) -> list[Observation]:
        with self._lock:
            return list(self.observations)

    def alerts_snapshot(self) -> list[AlertObservation]:
        with self._lock:
            return list(self.alerts)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started (a trial that failed early never starts it)
            self._thread.join(10)
