"""Hostile-input fuzzing: a real worker fed valid events mixed with hostile records of every kind.

Kinds (:mod:`stream_infer.tools.fuzz.kinds`): how a valid event is broken, and the dead-letter reason
the worker must give. The run (:mod:`stream_infer.tools.fuzz.run`): one worker process on a real Kafka,
the three demo pipelines (engines, machines, transactions), poison pills followed by canaries, and the accounting: every valid event
predicted once, every hostile record dead-lettered with its reason and a well-formed dead letter
(:mod:`stream_infer.tools.fuzz.accounting`), the worker alive throughout, its peak RSS; optionally the
peak RSS with a million distinct keys, with and without a bound on per-key state. The command
line is `stream-infer fuzz`.
"""

from stream_infer.tools.fuzz.kinds import Kind, all_kinds, kinds_for, kinds_table
from stream_infer.tools.fuzz.run import FuzzResult, FuzzSettings, run_fuzz

__all__ = ["FuzzResult", "FuzzSettings", "Kind", "all_kinds", "kinds_for", "kinds_table", "run_fuzz"]
