"""Everything that speaks Kafka: the local broker, admin helpers, clients. No model code here."""
