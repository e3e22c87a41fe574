"""Per-key state and its persistence, together: :mod:`.store` keeps each key's window and alert
state by input partition (bounded by TTL and key count); :mod:`.changelog` writes snapshots of it
to a compacted Kafka topic inside the checkpoint transaction and restores them when a partition
moves. The processing stages use the store; only the worker's wiring uses the changelog."""

from stream_infer.state.store import AlertState, KeyState, StateStore

__all__ = ["AlertState", "KeyState", "StateStore"]
