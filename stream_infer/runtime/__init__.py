"""The worker process: the Faust app (:mod:`.worker`), one :mod:`.runner` per pipeline wiring its
fetch side (:mod:`.source`), checkpoints (:mod:`.checkpointing`), rebalances (:mod:`.rebalance`)
and lag monitoring (:mod:`.monitor`, which steers the batching :mod:`stream_infer.controller`).

The runtime imports stages, state and the Kafka layer; nothing but the command line
imports it, and it never imports :mod:`stream_infer.tools`."""
