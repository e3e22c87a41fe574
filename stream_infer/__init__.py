"""stream-infer: streaming ML inference over Apache Kafka with Faust and ONNX Runtime."""

__version__ = "0.1.0"
