"""The shipped configs (package data), and variants of the demo config for tools and tests.

A variant is built on the parsed TOML (a dict), not on its text: :func:`demo_config_data` parses
demo.toml with its model and schema paths made absolute (so a copy written anywhere loads the
packaged files), :func:`rename_under` and :func:`keep_pipelines` reshape it, and
:func:`write_config` writes it out for a worker process to load (validated by
:func:`stream_infer.config.load_config` like any config)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

DEMO_CONFIG = Path(__file__).resolve().with_name("demo.toml")

# The [[pipelines]] keys that name a file, resolved against the config's folder (see load_config).
_PATH_KEYS = ("schema", "model")


def demo_config_data() -> dict[str, Any]:
    """demo.toml as a dict, every pipeline's model and schema path absolute."""
    data = tomllib.loads(DEMO_CONFIG.read_text())
    for pipeline in data["pipelines"]:
        for key in _PATH_KEYS:
            pipeline[key] = str((DEMO_CONFIG.parent / pipeline[key]).resolve())
    return data


def pipeline_table(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The [[pipelines]] table named `name` (KeyError naming the ones there are)."""
    for pipeline in data["pipelines"]:
        if pipeline["name"] == name:
            return pipeline
    raise KeyError(f"no pipeline {name!r}; the config has {[p['name'] for p in data['pipelines']]}")


def keep_pipelines(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """`data` with only the named pipelines, in that order."""
    data["pipelines"] = [pipeline_table(data, name) for name in names]
    return data


def rename_under(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`data` with the consumer group named `prefix` and every pipeline topic (input and outputs)
    renamed `<prefix>.<topic>`, so that runs sharing a cluster never share a topic or a group."""
    data["kafka"]["group_id"] = prefix
    for pipeline in data["pipelines"]:
        pipeline["input_topic"] = f"{prefix}.{pipeline['input_topic']}"
        topics = pipeline.get("topics", {})
        for role, topic in topics.items():
            topics[role] = f"{prefix}.{topic}"
    return data


def write_config(data: dict[str, Any], path: Path) -> Path:
    """Write `data` as TOML to `path` (folders created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path
