"""`stream-infer lag`: offsets, lag and lag age on a real broker, agreement with Kafka's own
kafka-consumer-groups tool, Burrow-style statuses (unit-tested on synthetic windows, and STALL,
STOP, REWIND and OK seen on the broker), and the errors a user may meet."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_infer.cli.lag_cmd import format_table, lag
from stream_infer.kafka.admin import create_topics
from stream_infer.lagstatus import (
    SEVERITY,
    GroupReport,
    OffsetSample,
    PartitionReport,
    Status,
    Windows,
    build_report,
    evaluate_partition,
    group_status,
    lag_seconds,
)
from stream_infer.tools.devkafka.jars import KafkaSetupError, ensure_jars, java_command

CLI = [sys.executable, "-m", "stream_infer.cli"]
FAST = ["--samples", "2", "--interval", "0.2"]  # the shortest window that still judges a trend


# --- helpers ---------------------------------------------------------------------------------


def seed(bootstrap: str, topic: str, produced: dict[int, int], timestamp_ms: int = 0) -> None:
    """Create `topic` with one partition per key of `produced` and write that many records to each.

    timestamp_ms 0 lets the producer stamp "now"; otherwise every record carries it as CreateTime.
    """
    create_topics(bootstrap, [topic], partitions=len(produced))
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, count in produced.items():
        for i in range(count):
            producer.produce(topic, value=b"r%d" % i, partition=partition, timestamp=timestamp_ms)
    assert producer.flush(30) == 0


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for `group` from outside it, the way a consumer that then died would leave them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def run_lag(*args: str) -> Result:
    # The command itself, not the `main` group: main's logging set-up would replace pytest's handlers.
    return CliRunner().invoke(lag, list(args), catch_exceptions=False)


def one_report(result: Result) -> dict:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one object, got: {result.stdout!r}"
    return json.loads(lines[0])


def by_partition(report: dict) -> dict[int, dict]:
    return {p["partition"]: p for p in report["partitions"]}


@contextmanager
def producing(bootstrap: str, topic: str, partitions: int, every_s: float = 0.05) -> Iterator[None]:
    """Keep writing one record to every partition each `every_s` seconds while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
        while not stop.is_set():
            for partition in range(partitions):
                producer.produce(topic, value=b"more", partition=partition)
            producer.flush(5)
            stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# --- lagstatus: the rules on synthetic windows -------------------------------------------------


def window(*points: tuple[int | None, int]) -> list[OffsetSample]:
    """Samples from (committed, log_end) pairs, oldest first."""
    return [OffsetSample(committed, log_end) for committed, log_end in points]


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        # 1. any zero lag -> OK, even when the offset also went backwards (rule 1 comes first)
        (((100, 100), (100, 120), (100, 140)), Status.OK),
        (((90, 100), (50, 100), (100, 100)), Status.OK),
        # a commit past the log end is negative lag, which counts as zero
        (((105, 100), (105, 110), (105, 120)), Status.OK),
        # 2. REWIND: committed went backwards between two samples, lag never zero
        (((80, 100), (90, 110), (60, 120), (70, 130)), Status.REWIND),
        # 3. STOP: committed constant, lag > 0, log end grows
        (((50, 100), (50, 100), (50, 130)), Status.STOP),
        # 4. STALL: committed constant, lag > 0, log end constant
        (((50, 100), (50, 100), (50, 100)), Status.STALL),
        # 5. WARN: committing, lag never falls and ends higher
        (((10, 100), (20, 110), (30, 130), (40, 140)), Status.WARN),
        (((10, 100), (20, 120), (30, 130)), Status.WARN),
        # 6. OK: committing and lag shrinking (catching up) ...
        (((10, 100), (40, 110), (70, 120)), Status.OK),
        # ... or committing with lag flat: not growing, so not WARN
        (((10, 100), (20, 110), (30, 120)), Status.OK),
        # ... or lag going up and down
        (((10, 100), (20, 130), (50, 140), (60, 160)), Status.OK),
    ],
)
def test_rules(points: tuple[tuple[int, int], ...], expected: Status) -> None:
    assert evaluate_partition(window(*points)) == expected


def test_single_sample_judges_no_trend() -> None:
    assert evaluate_partition(window((50, 100))) == Status.OK
    assert evaluate_partition(window((100, 100))) == Status.OK


def test_uncommitted_samples() -> None:
    assert evaluate_partition(window((None, 100), (None, 120))) is None
    assert evaluate_partition(window((50, 100), (None, 120))) is None, "latest has no commit: not judged"
    # Samples before the first commit are left out of the window.
    assert evaluate_partition(window((None, 100), (50, 100), (50, 130))) == Status.STOP
    assert evaluate_partition([]) is None


def test_group_status_is_the_worst_partition() -> None:
    assert [s for s in sorted(SEVERITY, key=SEVERITY.__getitem__)] == [
        Status.OK,
        Status.WARN,
        Status.STALL,
        Status.STOP,
        Status.REWIND,
    ]
    assert group_status([Status.OK, Status.OK]) == Status.OK
    assert group_status([Status.OK, Status.WARN, None]) == Status.WARN
    assert group_status([Status.WARN, Status.STALL, Status.OK]) == Status.STALL
    assert group_status([Status.STALL, Status.STOP]) == Status.STOP
    assert group_status([Status.STOP, Status.REWIND, Status.WARN]) == Status.REWIND
    assert group_status([None, None]) == Status.NOTFOUND
    assert group_status([]) == Status.NOTFOUND


def test_windows_slide_and_forget_vanished_partitions() -> None:
    windows = Windows(3)
    a, b = ("t", 0), ("t", 1)
    for committed in (50, 50, 50):
        windows.add({a: OffsetSample(committed, 100), b: OffsetSample(10, 100)})
    assert windows.statuses() == {a: Status.STALL, b: Status.STALL}
    windows.add({a: OffsetSample(60, 100)})  # b no longer reported
    assert list(windows.latest()) == [a]
    # Window is now 50, 50, 60: the oldest 50 slid out; lag fell -> OK.
    assert windows.statuses() == {a: Status.OK}
    with pytest.raises(ValueError):
        Windows(0)


def test_lag_seconds_and_report() -> None:
    assert lag_seconds(OffsetSample(5, 10), now=1000.0, oldest_unprocessed_ts=940.0) == 60.0
    assert lag_seconds(OffsetSample(10, 10), now=1000.0, oldest_unprocessed_ts=None) == 0.0
    assert lag_seconds(OffsetSample(5, 10), now=1000.0, oldest_unprocessed_ts=None) is None
    assert lag_seconds(OffsetSample(None, 10), now=1000.0, oldest_unprocessed_ts=940.0) is None
    assert lag_seconds(OffsetSample(5, 10), now=1000.0, oldest_unprocessed_ts=1001.0) == 0.0, "clock skew"

    windows = Windows(2)
    windows.add({("t", 1): OffsetSample(5, 10), ("t", 0): OffsetSample(None, 3)})
    windows.add({("t", 1): OffsetSample(5, 12), ("t", 0): OffsetSample(None, 3)})
    report = build_report("g", windows, now=1000.0, timestamps={("t", 1): 990.0})
    assert report.to_dict() == {
        "group": "g",
        "status": "STOP",
        "partitions": [
            {"topic": "t", "partition": 0, "committed": None, "log_end": 3, "lag": None, "lag_seconds": None, "status": None},
            {"topic": "t", "partition": 1, "committed": 5, "log_end": 12, "lag": 7, "lag_seconds": 10.0, "status": "STOP"},
        ],
    }


def test_table_format() -> None:
    report = GroupReport(
        "g",
        Status.STOP,
        [
            PartitionReport("orders", 0, 5, 12, 7, 10.04, Status.STOP),
            PartitionReport("orders", 1, None, 3, None, None, None),
        ],
    )
    assert format_table(report).splitlines() == [
        "TOPIC   PARTITION  COMMITTED  LOG-END  LAG  LAG-SECONDS  STATUS",
        "orders  0          5          12       7    10.0         STOP",
        "orders  1          -          3        -    -            -",
        "group g: STOP",
    ]


# --- the command on a real broker -------------------------------------------------------------


def test_json_reports_committed_log_end_lag_and_age(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lagcli"), unique("lagcli-group")
    written_at = time.time() - 60
    seed(kafka_bootstrap, topic, {0: 50, 1: 20, 2: 7}, timestamp_ms=int(written_at * 1000))
    commit(kafka_bootstrap, group, topic, {0: 30, 1: 20, 2: 2})

    before = time.time()
    result = run_lag("--group", group, "--bootstrap-servers", kafka_bootstrap, "--json", *FAST)
    after = time.time()
    assert result.exit_code == 0, result.output
    report = one_report(result)
    assert report["group"] == group
    parts = by_partition(report)
    assert sorted(parts) == [0, 1, 2]
    expected = {0: (30, 50), 1: (20, 20), 2: (2, 7)}
    for partition, (committed, log_end) in expected.items():
        row = parts[partition]
        assert set(row) == {"topic", "partition", "committed", "log_end", "lag", "lag_seconds", "status"}
        assert row["topic"] == topic
        assert (row["committed"], row["log_end"], row["lag"]) == (committed, log_end, log_end - committed)
    # The oldest unprocessed record was written 60 s ago: its age is read at the latest sample.
    for partition in (0, 2):
        age = parts[partition]["lag_seconds"]
        assert 55 <= age <= 65
        assert before - written_at - 0.5 <= age <= after - written_at + 0.5
    assert parts[1]["lag_seconds"] == 0
    # Nobody consumes and nothing new arrives: the partitions with a backlog are STALLed.
    assert [parts[p]["status"] for p in (0, 1, 2)] == ["STALL", "OK", "STALL"]
    assert report["status"] == "STALL"

    table = run_lag("--group", group, "--bootstrap-servers", kafka_bootstrap, *FAST)
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "LAG-SECONDS", "STATUS"]
    assert [line.split()[:5] for line in lines[1:4]] == [
        [topic, "0", "30", "50", "20"],
        [topic, "1", "20", "20", "0"],
        [topic, "2", "2", "7", "5"],
    ]
    assert lines[-1] == f"group {group}: STALL"


def kafka_describe(bootstrap: str, group: str) -> tuple[dict[tuple[str, int], tuple[str, str, str]], str]:
    """Kafka's own `kafka-consumer-groups --describe`: {(topic, partition): (current, log-end, lag)}
    as printed ("-" for none), and the tool's whole output."""
    try:
        classpath = f"{ensure_jars(quiet=True)}{os.sep}*"
        java = java_command()
    except KafkaSetupError as err:
        pytest.skip(f"Kafka's tools cannot run here: {err}")
    proc = subprocess.run(
        [
            java,
            "-cp",
            classpath,
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    header = next(i for i, cols in enumerate(lines) if cols[:2] == ["GROUP", "TOPIC"])
    names = lines[header]
    rows = {}
    for cols in lines[header + 1 :]:
        row = dict(zip(names, cols))
        assert row["GROUP"] == group, f"unexpected line in the tool's output: {cols}"
        rows[(row["TOPIC"], int(row["PARTITION"]))] = (row["CURRENT-OFFSET"], row["LOG-END-OFFSET"], row["LAG"])
    return rows, proc.stdout + proc.stderr


def test_lag_equals_kafka_consumer_groups_tool(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lagtool"), unique("lagtool-group")
    seed(kafka_bootstrap, topic, {0: 40, 1: 13, 2: 9})
    commit(kafka_bootstrap, group, topic, {0: 12, 1: 13, 2: 0})

    result = run_lag("--group", group, "--bootstrap-servers", kafka_bootstrap, "--json", *FAST)
    assert result.exit_code == 0, result.output
    ours = {(p["topic"], p["partition"]): p for p in one_report(result)["partitions"]}

    theirs, output = kafka_describe(kafka_bootstrap, group)
    # The group has no members (the committer left): the tool says so, and still lists the offsets.
    assert "has no active members" in output
    assert set(theirs) == set(ours) == {(topic, 0), (topic, 1), (topic, 2)}
    for key, (current, log_end, lag_) in theirs.items():
        assert (str(ours[key]["committed"]), str(ours[key]["log_end"]), str(ours[key]["lag"])) == (current, log_end, lag_)
    assert [theirs[(topic, p)][2] for p in range(3)] == ["28", "0", "9"]


def test_check_exits_0_for_an_ok_group(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lagok"), unique("lagok-group")
    seed(kafka_bootstrap, topic, {0: 5, 1: 8, 2: 3})
    commit(kafka_bootstrap, group, topic, {0: 5, 1: 8, 2: 3})  # caught up everywhere

    result = run_lag(
        "--group", group, "--bootstrap-servers", kafka_bootstrap, "--check", "--json", "--samples", "3", "--interval", "0.3"
    )
    assert result.exit_code == 0, result.output
    report = one_report(result)
    assert report["status"] == "OK"
    assert all(p["lag"] == 0 and p["lag_seconds"] == 0 and p["status"] == "OK" for p in report["partitions"])


def test_check_exits_1_for_a_stopped_group(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lagstop"), unique("lagstop-group")
    seed(kafka_bootstrap, topic, {0: 10, 1: 10, 2: 10})
    commit(kafka_bootstrap, group, topic, {0: 2, 1: 5, 2: 9})  # then the consumer died

    with producing(kafka_bootstrap, topic, partitions=3):  # records keep arriving meanwhile
        result = run_lag(
            "--group", group, "--bootstrap-servers", kafka_bootstrap, "--check", "--json", "--samples", "3", "--interval", "0.3"
        )
    assert result.exit_code == 1, result.output
    report = one_report(result)
    assert report["status"] == "STOP"
    parts = by_partition(report)
    assert [parts[p]["status"] for p in range(3)] == ["STOP", "STOP", "STOP"]
    assert [parts[p]["committed"] for p in range(3)] == [2, 5, 9]
    assert all(parts[p]["log_end"] > 10 for p in range(3)), "the producer thread wrote during the window"


def test_rewind_between_samples_is_reported(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lagrewind"), unique("lagrewind-group")
    seed(kafka_bootstrap, topic, {0: 50})
    commit(kafka_bootstrap, group, topic, {0: 40})

    # --watch makes the timing deterministic: every sample before the first report saw 40, and the
    # rewind is committed only after it, so it falls inside a later window.
    proc = subprocess.Popen(
        [
            *CLI,
            "lag",
            "--group",
            group,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--json",
            "--watch",
            "--samples",
            "3",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["status"] == "STALL" and first["partitions"][0]["committed"] == 40
        commit(kafka_bootstrap, group, topic, {0: 20})  # someone reset the group's offset back
        reports = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reports.append(json.loads(proc.stdout.readline()))
            if reports[-1]["status"] == "REWIND":
                break
        assert reports[-1]["status"] == "REWIND", reports
        assert reports[-1]["partitions"][0] | {"lag_seconds": None} == {
            "topic": topic,
            "partition": 0,
            "committed": 20,
            "log_end": 50,
            "lag": 30,
            "lag_seconds": None,
            "status": "REWIND",
        }
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends --watch cleanly
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unknown_group_exits_2_unless_topics_are_named(kafka_bootstrap: str, unique) -> None:
    topic, group = unique("lagnone"), unique("lagnone-group")
    seed(kafka_bootstrap, topic, {0: 4, 1: 0})

    result = run_lag("--group", group, "--bootstrap-servers", kafka_bootstrap)
    assert result.exit_code == 2
    assert f"consumer group '{group}' does not exist on {kafka_bootstrap}" in result.stderr
    assert "--topic" in result.stderr and result.stdout == ""

    named = run_lag("--group", group, "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--json", *FAST)
    assert named.exit_code == 0, named.output
    report = one_report(named)
    assert report["status"] == "NOTFOUND"
    assert [
        (p["partition"], p["committed"], p["log_end"], p["lag"], p["lag_seconds"], p["status"]) for p in report["partitions"]
    ] == [(0, None, 4, None, None, None), (1, None, 0, None, None, None)]

    missing = run_lag("--group", group, "--bootstrap-servers", kafka_bootstrap, "--topic", unique("nosuchtopic"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_check_needs_two_samples() -> None:
    result = run_lag("--group", "g", "--check", "--samples", "1")
    assert result.exit_code == 2 and "--samples 2" in result.stderr


def test_unreachable_broker_exits_2_quickly() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "lag", "--group", "g", "--bootstrap-servers", address], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert elapsed < 10
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1, proc.stderr
    assert address in errors[0] and "stream-infer kafka up" in errors[0]
    assert proc.stdout == ""
