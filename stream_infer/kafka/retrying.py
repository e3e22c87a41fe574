"""Retrying a client call through a broker or coordinator failing over.

While a leader or coordinator moves, calls fail for a few seconds with errors that librdkafka
does not always mark retriable (a timeout, a broker handle destroyed as the dead broker leaves
the metadata, an unknown leader epoch). Calls made to recover from a fault (restore, rewind) are
therefore retried on any KafkaException until their deadline, then the last error is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaException

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_INTERVAL_S = 0.5


def retry_kafka(call: Callable[[], T], *, timeout: float, what: str) -> T:
    """`call()`, repeated every RETRY_INTERVAL_S while it raises KafkaException, for up to
    `timeout` seconds; the first failure is logged (info), the last is raised."""
    deadline = time.monotonic() + timeout
    logged = False
    while True:
        try:
            return call()
        except KafkaException as exc:
            if time.monotonic() + RETRY_INTERVAL_S > deadline:
                raise
            if not logged:
                log.info("%s failed, retrying for up to %.0f s", what, timeout, extra={"error": exc.args[0].str()})
                logged = True
            time.sleep(RETRY_INTERVAL_S)
