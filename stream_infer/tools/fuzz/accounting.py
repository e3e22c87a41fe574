"""What a hostile record's dead letter must look like, and the check of one against it.

Shared by the in-process test of the kinds and the run against a real broker, so both hold the
worker to the same contract (see :mod:`stream_infer.stages.outputs`):

* exactly one `x-dlq-reason`, equal to the kind's reason; exactly one of each `x-source-*`
  header, naming the input's topic, partition and offset when they are known;
* the input's key and value kept as they are, or, beyond the pipeline's limits, as their first
  :data:`~stream_infer.stages.outputs.EXCERPT_BYTES` bytes with `x-dlq-key-bytes` / `x-dlq-value-bytes`
  giving the original size;
* input headers named `x-dlq-*` / `x-source-*` copied as `x-original-<name>`; input headers
  copied up to :data:`~stream_infer.stages.outputs.HEADER_BUDGET_BYTES` in all, the rest counted in
  `x-dlq-headers-dropped`.

An :class:`Expectation` keeps digests, not the record itself, so a run of many 1 MB records
holds only a few hundred bytes per record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from stream_infer.stages.outputs import EXCERPT_BYTES, HEADER_BUDGET_BYTES
from stream_infer.tools.fuzz.kinds import Hostile

_RESERVED = ("x-dlq-", "x-source-")
_SOURCE_HEADERS = ("x-source-topic", "x-source-partition", "x-source-offset")

HeaderList = Sequence[tuple[str, bytes | None]]


def _digest(data: bytes | None) -> bytes:
    return hashlib.blake2b(data or b"", digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Expectation:
    """The dead letter one hostile record must get."""

    kind: str
    reason: str
    key_digest: bytes  # of the key the dead letter carries (the input's, or its excerpt)
    key_bytes: int | None  # the x-dlq-key-bytes the dead letter carries, None: no such header
    value_digest: bytes
    value_bytes: int | None
    renamed: tuple[tuple[str, bytes | None], ...]  # reserved input headers, as x-original-<name>
    input_headers: int


def expect_dead_letter(kind: str, reason: str, hostile: Hostile, *, max_message_bytes: int, max_key_bytes: int) -> Expectation:
    key, value = hostile.key, hostile.value or b""
    key_bytes = value_bytes = None
    if key is not None and len(key) > max_key_bytes:
        key_bytes, key = len(key), key[:EXCERPT_BYTES]
    if len(value) > max_message_bytes:
        value_bytes, value = len(value), value[:EXCERPT_BYTES]
    renamed = tuple(("x-original-" + n, v) for n, v in hostile.headers if n.startswith(_RESERVED))
    return Expectation(kind, reason, _digest(key), key_bytes, _digest(value), value_bytes, renamed, len(hostile.headers))


def dead_letter_problems(
    expected: Expectation, key: bytes | None, value: bytes | None, headers: HeaderList, source: tuple[str, int, int] | None = None
) -> list[str]:
    """What is wrong with a dead letter (key, value, headers in order) for `expected`; empty if
    nothing. `source`: the input's (topic, partition, offset), checked when given."""
    problems: list[str] = []
    found: dict[str, list[bytes | None]] = {}
    for name, data in headers:
        found.setdefault(name, []).append(data)
    reasons = found.get("x-dlq-reason", [])
    if reasons != [expected.reason.encode()]:
        problems.append(f"x-dlq-reason {reasons!r}, expected [{expected.reason!r}]")
    for name in _SOURCE_HEADERS:
        if len(found.get(name, [])) != 1:
            problems.append(f"{name} appears {len(found.get(name, []))} times")
    if source is not None and not problems:
        got = tuple(found[name][0] for name in _SOURCE_HEADERS)
        want = tuple(str(x).encode() for x in source)
        if got != want:
            problems.append(f"x-source-* {got!r}, expected {want!r}")
    if _digest(key) != expected.key_digest:
        problems.append(f"key of {len(key or b'')} bytes is not the input's (or its {EXCERPT_BYTES}-byte excerpt)")
    if _digest(value) != expected.value_digest:
        problems.append(f"value of {len(value or b'')} bytes is not the input's (or its {EXCERPT_BYTES}-byte excerpt)")
    for header, size in (("x-dlq-key-bytes", expected.key_bytes), ("x-dlq-value-bytes", expected.value_bytes)):
        want_sizes = [] if size is None else [str(size).encode()]
        if found.get(header, []) != want_sizes:
            problems.append(f"{header} {found.get(header, [])!r}, expected {want_sizes!r}")
    for name, data in expected.renamed:
        if data not in found.get(name, []):
            problems.append(f"spoofed input header not kept as {name}")
    copied = [(n, v) for n, v in headers if not n.startswith(_RESERVED)]  # the input's, renamed ones included
    copied_bytes = sum(len(n) + len(v or b"") for n, v in copied)
    if copied_bytes > HEADER_BUDGET_BYTES:
        problems.append(f"{copied_bytes} bytes of input headers copied, over the {HEADER_BUDGET_BYTES}-byte budget")
    dropped = int(found.get("x-dlq-headers-dropped", [b"0"])[0] or 0)
    if len(copied) + dropped != expected.input_headers:
        problems.append(f"{len(copied)} input headers copied and {dropped} dropped, of {expected.input_headers}")
    return problems
