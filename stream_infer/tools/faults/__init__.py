"""Fault injection for development: real workers, a real Kafka, faults at seeded random moments.

Scenarios (:mod:`stream_infer.tools.faults.scenarios`): ``worker_kill`` (SIGKILL one of three workers
mid-stream), ``rolling_restart`` (SIGTERM and restart two workers one by one), ``broker_kill``
(SIGKILL the broker leading the most input partitions of a 3-node cluster), ``coordinator_kill``
(the same for the broker coordinating the consumer group). Each trial feeds the
`engines` pipeline a looped C-MAPSS stream at a fixed rate and checks, against predictions and
alerts computed in process without Kafka (:mod:`stream_infer.tools.faults.reference`), that no input was
lost, that every prediction equals the uninterrupted run's, that the alerts are the uninterrupted
run's, how many predictions and alerts were duplicated, and how long the affected partitions
stalled (:mod:`stream_infer.tools.faults.report`). The command line is
`stream-infer faults`.
"""

from stream_infer.tools.faults.harness import GUARANTEES, run_trial
from stream_infer.tools.faults.report import TrialResult, summarize, summary_json, table, trial_line
from stream_infer.tools.faults.run import run_faults

__all__ = ["GUARANTEES", "TrialResult", "run_faults", "run_trial", "summarize", "summary_json", "table", "trial_line"]
