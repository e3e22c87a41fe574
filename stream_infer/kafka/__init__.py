"""Everything that speaks Kafka to a cluster: connection settings, the start-up check, consumers,
producers, transactions, admin helpers and ACLs. No processing stage and no development tool is
imported here."""
