"""Logging set-up shared by every command: quiet by default, structured on request.

`text` is for people at a terminal; `json` (one object per line) is for log shippers. Both go to
stderr, so stdout stays clean for the output a command promises (an address, a JSON summary).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import orjson

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, plus any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """`HH:MM:SS level logger: message key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS)
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():7s} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class ConnectionOutageFilter(logging.Filter):
    """librdkafka logs every failed reconnect to a broker (several a second per client while a
    broker is down, with backoff up to 10 s). This keeps one line when a client's connection to
    a broker starts failing and one when no failure has come for `quiet_s` (how many were
    suppressed, over how long): an outage costs two lines per client and broker, not a stream.

    Records are librdkafka's, as confluent-kafka passes them: args (facility, client, message);
    connection failures have facility FAIL and name the broker before the first colon."""

    def __init__(self, quiet_s: float = 15.0) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self._outages: dict[tuple[str, str], list[float]] = {}  # (client, broker) -> [first, last, suppressed]
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self.log = logging.getLogger("stream_infer.kafka.connection")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 3 and args[0] == "FAIL"):
            return True
        _, client, message = args
        text = str(message).split("]: ", 1)[-1]
        broker, _, reason = text.partition(": ")
        key = (str(client), broker)
        now = time.monotonic()
        with self._lock:
            outage = self._outages.get(key)
            if outage is not None:
                outage[1] = now
                outage[2] += 1
                return False
            self._outages[key] = [now, now, 0]
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="outage-log", daemon=True)
                self._watcher.start()
        self.log.warning(
            "connection to broker %s failing: %s (repeats suppressed until it recovers)", broker, reason, extra={"client": client}
        )
        return False

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            self.report_quiet(time.monotonic())

    def report_quiet(self, now: float) -> None:
        with self._lock:
            ended = [(key, o) for key, o in self._outages.items() if now - o[1] >= self.quiet_s]
            for key, _ in ended:
                del self._outages[key]
        for (client, broker), (first, last, suppressed) in ended:
            self.log.warning(
                "connection to broker %s: no failure for %.0f s (failing for %.0f s before, %d repeats suppressed)",
                broker,
                now - last,
                last - first,
                int(suppressed),
                extra={"client": client},
            )


_OUTAGES = ConnectionOutageFilter()


def setup_logging(level: str = "warning", fmt: str = "text") -> None:
    """Configure the root logger once for a command; libraries' chatter stays at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka and faust log every rebalance step at INFO; ours is the story an operator needs.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # librdkafka warns about every transient retry (coordinator loading, leader moves) that it then
    # resolves itself; its errors still show.
    client = logging.getLogger("stream_infer.kafka.client")
    client.setLevel(max(logging.ERROR, root.level))
    if _OUTAGES not in client.filters:
        client.addFilter(_OUTAGES)
