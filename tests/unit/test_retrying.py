"""retry_kafka: recovery calls ride through a failover's errors, within a deadline."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_infer.kafka import retrying
from stream_infer.kafka.retrying import retry_kafka


def test_a_call_failing_for_a_while_is_retried_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying, "RETRY_INTERVAL_S", 0.01)
    answers = iter([KafkaError(KafkaError._TIMED_OUT), KafkaError(KafkaError._DESTROY_BROKER), 42])

    def call() -> int:
        answer = next(answers)
        if isinstance(answer, KafkaError):
            raise KafkaException(answer)
        return answer

    assert retry_kafka(call, timeout=5, what="test") == 42


def test_the_last_error_is_raised_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying, "RETRY_INTERVAL_S", 0.01)
    calls = []

    def call() -> None:
        calls.append(time.monotonic())
        raise KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE))

    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        retry_kafka(call, timeout=0.2, what="test")
    assert raised.value.args[0].code() == KafkaError.COORDINATOR_NOT_AVAILABLE
    assert 0.15 < time.monotonic() - started < 1.0 and len(calls) > 3
