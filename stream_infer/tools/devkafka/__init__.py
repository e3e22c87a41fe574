"""The development broker: Apache Kafka (KRaft) run from Maven-fetched jars on this host, plain
or secured (`stream-infer kafka up [--secure]`), for the demo, the tests and the tools.

The production worker never imports this package: it connects to whatever cluster its config
names (:mod:`stream_infer.kafka`)."""
