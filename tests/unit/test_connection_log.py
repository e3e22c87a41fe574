"""A broker outage logs two lines per client and broker (start, quiet again), not a stream."""

from __future__ import annotations

import logging
import time

import pytest

from stream_infer.logs import ConnectionOutageFilter


def _fail(client: str, broker: str) -> logging.LogRecord:
    address = broker.split("/")[0]
    message = f"[thrd:{broker}]: {broker}: Connect to ipv4#{address} failed: Connection refused (after 0ms in state CONNECT)"
    return logging.LogRecord(
        "stream_infer.kafka.client", logging.ERROR, __file__, 0, "%s [%s] %s", ("FAIL", client, message), None
    )


def test_an_outage_logs_one_line_when_it_starts_and_one_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    outages = ConnectionOutageFilter(quiet_s=5.0)
    with caplog.at_level(logging.WARNING, logger="stream_infer.kafka.connection"):
        passed = [outages.filter(_fail("rdkafka#consumer-1", "127.0.0.1:9092/1")) for _ in range(50)]
        passed += [outages.filter(_fail("rdkafka#producer-2", "127.0.0.1:9092/1")) for _ in range(50)]
        other = logging.LogRecord(
            "stream_infer.kafka.client",
            logging.ERROR,
            __file__,
            0,
            "%s [%s] %s",
            ("REQTMOUT", "rdkafka#consumer-1", "timed out"),
            None,
        )
        assert outages.filter(other)  # anything but connection failures passes untouched
        outages.report_quiet(time.monotonic() + 1)  # still failing: nothing to say
        outages.report_quiet(time.monotonic() + 10)
    assert not any(passed)  # librdkafka's own lines are replaced by ours
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert sum("failing: Connect to ipv4#127.0.0.1:9092 failed" in line for line in lines) == 2
    assert sum("no failure for" in line and "49 repeats suppressed" in line for line in lines) == 2
    # A new outage after the quiet period is reported again.
    with caplog.at_level(logging.WARNING, logger="stream_infer.kafka.connection"):
        outages.filter(_fail("rdkafka#consumer-1", "127.0.0.1:9092/1"))
    assert caplog.records[-1].getMessage().startswith("connection to broker 127.0.0.1:9092/1 failing")
