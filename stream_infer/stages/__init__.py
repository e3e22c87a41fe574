"""The processing stages of a pipeline's batch path, in data-flow order: :mod:`.decode` (with the
vectorised schema check of :mod:`.batchcheck`), :mod:`.features`, :mod:`.engine`,
:mod:`.postprocess` and :mod:`.outputs`; :mod:`.pipeline` runs them over one batch.

No stage opens a Kafka client: records come in as :class:`stream_infer.records.InputRecord` and
leave as :class:`stream_infer.kafka.producer.OutMessage` handed to a producer the runtime owns."""
