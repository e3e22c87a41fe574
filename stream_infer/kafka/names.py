"""The Kafka names a worker derives from its consumer group id, in one place: what it creates and
uses (state changelogs, transactional ids, helper groups) and what the ACLs it needs must name.

Every helper group starts with ``<group>-``, so one prefixed DESCRIBE grant covers them all."""

from __future__ import annotations


def changelog_topic(group_id: str, pipeline: str) -> str:
    """The compacted topic holding `pipeline`'s per-key state snapshots."""
    return f"{group_id}-{pipeline}-state"


def restore_group(changelog: str) -> str:
    """The group id of the consumer that restores a changelog at assigned offsets (never joins or
    commits; the client requires a group id and looks up its coordinator)."""
    return f"{changelog}-restore"


def probe_group(group_id: str) -> str:
    """The group id of the consumers that read at assigned offsets on behalf of `group_id` to time
    its lag (never joined or committed)."""
    return f"{group_id}-lag-probe"


def transactional_id_prefix(group_id: str, pipeline: str) -> str:
    """What every transactional id of `pipeline`'s checkpoint producers starts with."""
    return f"{group_id}-{pipeline}-"


def transactional_id(group_id: str, pipeline: str, instance: str) -> str:
    """The transactional id of one worker instance's checkpoint producer for `pipeline`."""
    return transactional_id_prefix(group_id, pipeline) + instance
